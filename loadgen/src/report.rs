//! The report of a run: its parts made from the children's merged [`Counters`], the JSON
//! object (schema in the crate documentation) and the plain-text summary.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::counters::Counters;
use crate::hist::{Hist, Summary};
use crate::publish::PubResult;
use crate::tls::TlsSpec;
use crate::wire::Outage;

/// The schema name and version written in every report.
pub const SCHEMA: &str = "loadgen/1";

/// The whole report. Field meanings are documented in the crate documentation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub mode: &'static str,
    pub url: String,
    pub publish_url: Option<String>,
    pub transport: &'static str,
    /// Socket.IO: the namespace (`None` for the other transports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub format: &'static str,
    pub conns: u64,
    pub channels: u32,
    pub procs: u32,
    pub sources: u32,
    pub interrupted: bool,
    pub capped: bool,
    pub elapsed_s: f64,
    pub hold_s: f64,
    pub warnings: Vec<String>,
    pub connect: ConnectReport,
    pub drops: DropReport,
    pub fanout: Option<FanoutReport>,
    pub storm: Option<StormReport>,
    pub handshake: Option<HandshakeReport>,
    pub tls: Option<TlsReport>,
}

/// Handshake mode: connections opened and closed once subscribed, as fast as they go.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandshakeReport {
    pub concurrency: u64,
    pub duration_s: f64,
    pub completed: u64,
    pub failed: u64,
    pub phase_s: f64,
    pub per_s: f64,
    pub latency_us: Summary,
}

/// TLS handshakes of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsReport {
    pub server_name: String,
    pub verify: &'static str,
    pub resumption: bool,
    pub versions_offered: &'static str,
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub by_version: BTreeMap<String, u64>,
    pub full_us: Summary,
    pub resumed_us: Summary,
}

/// Connection establishment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectReport {
    pub attempts: u64,
    pub established: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub rate_per_s: f64,
    pub phase_s: f64,
    pub latency_us: Summary,
}

/// Connections the server ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DropReport {
    pub dropped: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub open_at_end: u64,
}

/// Fan-out delivery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutReport {
    pub messages: u32,
    pub size: usize,
    pub publish_rate: f64,
    pub publishes_total: u64,
    pub published: u64,
    pub publish_failed: u64,
    pub publish_reply_us: Summary,
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub latency_us: Summary,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub seq_errors: u64,
    pub gaps: u64,
    pub foreign: u64,
    pub lost_on_dropped: u64,
    pub complete_subscribers: u64,
    pub incomplete_subscribers: u64,
    pub publishes: Vec<PublishRow>,
    pub publishers: u32,
    pub pipeline: u32,
    pub publish_phase_s: f64,
    pub publishes_per_s: f64,
    pub first_arrival_us: Summary,
    pub last_arrival_us: Summary,
    pub publishes_omitted: u64,
}

/// The shape of a fan-out run, for its report.
#[derive(Debug, Clone, Copy, Default)]
pub struct FanoutShape {
    /// Messages per channel.
    pub messages: u32,
    /// Content size.
    pub size: usize,
    /// Publishes per second asked (0: back to back).
    pub publish_rate: f64,
    /// Publisher connections.
    pub publishers: u32,
    /// Requests in flight per publisher connection.
    pub pipeline: u32,
    /// First request to last reply, seconds.
    pub publish_phase_s: f64,
    /// Most per-publish rows in the report (`None`: all).
    pub max_rows: Option<usize>,
}

/// One publish.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRow {
    pub i: u32,
    pub channel: String,
    pub status: u16,
    pub seq: Option<u64>,
    pub reply_us: Option<u64>,
    pub receivers: u32,
    pub missing: u32,
    pub duplicates: u32,
    pub out_of_order: u32,
    pub first_us: Option<u64>,
    pub last_us: Option<u64>,
}

/// Churn and reconnects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormReport {
    pub churn_per_s: f64,
    pub churn_closed: u64,
    pub reconnects: u64,
    pub outages: Vec<OutageRow>,
    pub longest_recovery_s: Option<f64>,
    pub unrecovered: bool,
}

/// An interval during which connections dropped by the server were not all back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutageRow {
    pub start_s: f64,
    pub recovered_after_s: Option<f64>,
    pub peak_down: u64,
}

/// The parts of the report made from the children's [`Counters`], summed with
/// [`Counters::add`].
impl Counters {
    /// The connection part of the report.
    pub fn connect_report(&self) -> ConnectReport {
        let phase_s = match (self.first_attempt_ns, self.last_initial_ns) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => 0.0,
        };
        ConnectReport {
            attempts: self.attempts,
            established: self.established,
            failed: self.failed_total(),
            failed_by_reason: self.failed.clone(),
            rate_per_s: if phase_s > 0.0 {
                round2(self.initial_established as f64 / phase_s)
            } else {
                0.0
            },
            phase_s: round3(phase_s),
            latency_us: self.connect_hist.summary(),
        }
    }

    /// The drop part of the report.
    pub fn drop_report(&self) -> DropReport {
        DropReport {
            dropped: self.dropped_total(),
            by_reason: self.dropped.clone(),
            open_at_end: self.open_at_end,
        }
    }

    /// The fan-out part: `results` are the publisher's, `channels` the channel names.
    pub fn fanout_report(
        &self,
        results: &[PubResult],
        channels: &[String],
        reply: &Hist,
        shape: FanoutShape,
    ) -> FanoutReport {
        let first_sent = results.iter().filter(|r| r.sent).map(|r| r.sent_ns).min();
        let delivered = self.latency_hist.count();
        let deliveries_per_s = match (first_sent, self.last_arrival_ns) {
            (Some(a), Some(b)) if b > a => round2(delivered as f64 / ((b - a) as f64 / 1e9)),
            _ => 0.0,
        };
        let c = channels.len().max(1);
        let mut firsts = Hist::new();
        let mut lasts = Hist::new();
        for (p, r) in results.iter().enumerate() {
            let agg = self.publishes.get(p).copied().unwrap_or_default();
            if r.sent && agg.receivers > 0 {
                firsts.record_us(agg.first_ns / 1000);
                lasts.record_us(agg.last_ns / 1000);
            }
        }
        let sent_rows = results.iter().filter(|r| r.sent).count();
        let rows = shape.max_rows.unwrap_or(usize::MAX);
        let publishes: Vec<PublishRow> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.sent)
            .take(rows)
            .map(|(p, r)| {
                let agg = self.publishes.get(p).copied().unwrap_or_default();
                PublishRow {
                    i: (p / c) as u32,
                    channel: channels.get(p % c).cloned().unwrap_or_default(),
                    status: r.status,
                    seq: r.seq,
                    reply_us: r.reply_us,
                    receivers: agg.receivers,
                    missing: agg.missing,
                    duplicates: agg.duplicates,
                    out_of_order: agg.out_of_order,
                    first_us: (agg.receivers > 0).then_some(agg.first_ns / 1000),
                    last_us: (agg.receivers > 0).then_some(agg.last_ns / 1000),
                }
            })
            .collect();
        let sent = results.iter().filter(|r| r.sent).count() as u64;
        let ok = results.iter().filter(|r| r.ok).count() as u64;
        FanoutReport {
            messages: shape.messages,
            size: shape.size,
            publish_rate: shape.publish_rate,
            publishes_total: results.len() as u64,
            published: ok,
            publish_failed: sent - ok,
            publish_reply_us: reply.summary(),
            expected: self.tally.received + self.tally.lost,
            delivered,
            deliveries_per_s,
            latency_us: self.latency_hist.summary(),
            lost: self.tally.lost,
            duplicated: self.tally.duplicated + self.tally_dropped.duplicated,
            out_of_order: self.tally.out_of_order + self.tally_dropped.out_of_order,
            unexpected: self.tally.unexpected + self.tally_dropped.unexpected,
            seq_errors: self.seq_errors,
            gaps: self.gaps,
            foreign: self.foreign,
            lost_on_dropped: self.tally_dropped.lost,
            complete_subscribers: self.complete,
            incomplete_subscribers: self.incomplete,
            publishes_omitted: sent_rows.saturating_sub(publishes.len()) as u64,
            publishes,
            publishers: shape.publishers,
            pipeline: shape.pipeline,
            publish_phase_s: round3(shape.publish_phase_s),
            publishes_per_s: if shape.publish_phase_s > 0.0 {
                round2(ok as f64 / shape.publish_phase_s)
            } else {
                0.0
            },
            first_arrival_us: firsts.summary(),
            last_arrival_us: lasts.summary(),
        }
    }

    /// The handshake part: `concurrency` connections at once, for `duration_s` asked.
    pub fn handshake_report(&self, concurrency: u64, duration_s: f64) -> HandshakeReport {
        let phase_s = match (self.first_attempt_ns, self.stop_ns) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => 0.0,
        };
        HandshakeReport {
            concurrency,
            duration_s,
            completed: self.established,
            failed: self.failed_total(),
            phase_s: round3(phase_s),
            per_s: if phase_s > 0.0 {
                round2(self.established as f64 / phase_s)
            } else {
                0.0
            },
            latency_us: self.connect_hist.summary(),
        }
    }

    /// The TLS part.
    pub fn tls_report(&self, spec: &TlsSpec) -> TlsReport {
        TlsReport {
            server_name: spec.server_name.clone(),
            verify: if spec.ca_pem.is_some() {
                "ca"
            } else {
                "insecure"
            },
            resumption: spec.resume,
            versions_offered: spec.versions.name(),
            handshakes: self.tls_full + self.tls_resumed,
            full: self.tls_full,
            resumed: self.tls_resumed,
            by_version: self.tls_versions.clone(),
            full_us: self.tls_full_hist.summary(),
            resumed_us: self.tls_resumed_hist.summary(),
        }
    }

    /// The storm part: outages relative to `start_ns`.
    pub fn storm_report(&self, churn_per_s: f64, start_ns: u64) -> StormReport {
        let outages = merge_outages(&self.outages, start_ns);
        let longest = outages
            .iter()
            .filter_map(|o| o.recovered_after_s)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        StormReport {
            churn_per_s,
            churn_closed: self.churn_closed,
            reconnects: self.reconnects,
            unrecovered: outages.iter().any(|o| o.recovered_after_s.is_none()),
            outages,
            longest_recovery_s: longest,
        }
    }
}

/// Most outage rows reported (the longest are kept).
pub const MAX_OUTAGES: usize = 1000;

/// Unites overlapping outages of all processes: an outage of the run lasts while any
/// process has connections down. `peak_down` adds the processes' peaks.
pub fn merge_outages(outages: &[Outage], start_ns: u64) -> Vec<OutageRow> {
    let mut v: Vec<Outage> = outages.to_vec();
    v.sort_by_key(|o| o.start_ns);
    let mut merged: Vec<Outage> = Vec::new();
    for o in v {
        if let Some(last) = merged.last_mut() {
            let overlaps = match last.end_ns {
                None => true,
                Some(end) => o.start_ns <= end,
            };
            if overlaps {
                last.end_ns = match (last.end_ns, o.end_ns) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                last.peak += o.peak;
                continue;
            }
        }
        merged.push(o);
    }
    let mut rows: Vec<OutageRow> = merged
        .iter()
        .map(|o| OutageRow {
            start_s: round3(o.start_ns.saturating_sub(start_ns) as f64 / 1e9),
            recovered_after_s: o
                .end_ns
                .map(|e| round3(e.saturating_sub(o.start_ns) as f64 / 1e9)),
            peak_down: o.peak,
        })
        .collect();
    if rows.len() > MAX_OUTAGES {
        rows.sort_by(|a, b| {
            let d = |r: &OutageRow| r.recovered_after_s.unwrap_or(f64::INFINITY);
            d(b).total_cmp(&d(a))
        });
        rows.truncate(MAX_OUTAGES);
        rows.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    }
    rows
}

/// Rounds to 2 decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to 3 decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn summary_line(s: &Summary) -> String {
    if s.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        s.count
    )
}

fn reasons(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(" ({})", parts.join(", "))
}

impl Report {
    /// The plain-text summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadgen {}: {} x {} ({}{}, {} format) over {} channel(s), {} process(es), {} source(s){}",
            self.mode,
            self.conns,
            self.url,
            self.transport,
            self.namespace
                .as_deref()
                .map_or(String::new(), |n| format!(" namespace {n}")),
            self.format,
            self.channels,
            self.procs,
            self.sources.max(1),
            if self.interrupted { " [interrupted]" } else if self.capped { " [hard cap]" } else { "" }
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let c = &self.connect;
        let _ = writeln!(
            s,
            "connect: {} established of {} attempts, {} failed{}",
            c.established,
            c.attempts,
            c.failed,
            reasons(&c.failed_by_reason)
        );
        let _ = writeln!(
            s,
            "  rate {:.0}/s over {:.2} s; latency {}",
            c.rate_per_s,
            c.phase_s,
            summary_line(&c.latency_us)
        );
        let d = &self.drops;
        let _ = writeln!(
            s,
            "held {:.1} s: {} open at end, {} dropped by the server{}",
            self.hold_s,
            d.open_at_end,
            d.dropped,
            reasons(&d.by_reason)
        );
        if let Some(f) = &self.fanout {
            let _ = writeln!(
                s,
                "publish: {} ok of {} ({} failed), reply {}",
                f.published,
                f.publishes_total,
                f.publish_failed,
                summary_line(&f.publish_reply_us)
            );
            let _ = writeln!(
                s,
                "  {:.0} publishes/s over {:.2} s ({} connection(s), {} in flight each)",
                f.publishes_per_s, f.publish_phase_s, f.publishers, f.pipeline
            );
            let _ = writeln!(
                s,
                "delivery: {} of {} expected, {:.0}/s; latency {}",
                f.delivered,
                f.expected,
                f.deliveries_per_s,
                summary_line(&f.latency_us)
            );
            let _ = writeln!(
                s,
                "  lost {}  duplicated {}  out of order {}  unexpected {}  seq errors {}  gaps {}  foreign {}  (lost on dropped conns {})",
                f.lost, f.duplicated, f.out_of_order, f.unexpected, f.seq_errors, f.gaps, f.foreign, f.lost_on_dropped
            );
            let _ = writeln!(
                s,
                "  subscribers complete {}  incomplete {}",
                f.complete_subscribers, f.incomplete_subscribers
            );
            let show = f.publishes.len() <= 20 && f.publishes_omitted == 0;
            if show {
                let _ = writeln!(
                    s,
                    "  {:>6} {:>10} {:>7} {:>9} {:>7} {:>5} {:>5} {:>10} {:>10} {:>10}",
                    "i",
                    "channel",
                    "status",
                    "receivers",
                    "missing",
                    "dup",
                    "late",
                    "reply",
                    "first",
                    "last"
                );
                for p in &f.publishes {
                    let _ = writeln!(
                        s,
                        "  {:>6} {:>10} {:>7} {:>9} {:>7} {:>5} {:>5} {:>10} {:>10} {:>10}",
                        p.i,
                        p.channel,
                        p.status,
                        p.receivers,
                        p.missing,
                        p.duplicates,
                        p.out_of_order,
                        p.reply_us.map_or("-".into(), ms),
                        p.first_us.map_or("-".into(), ms),
                        p.last_us.map_or("-".into(), ms)
                    );
                }
            } else {
                let bad: Vec<String> = f
                    .publishes
                    .iter()
                    .filter(|p| p.missing + p.duplicates + p.out_of_order > 0)
                    .take(20)
                    .map(|p| {
                        format!(
                            "{}@{} missing {} dup {} late {}",
                            p.i, p.channel, p.missing, p.duplicates, p.out_of_order
                        )
                    })
                    .collect();
                if !bad.is_empty() {
                    let _ = writeln!(
                        s,
                        "  publishes with problems (first 20): {}",
                        bad.join("; ")
                    );
                }
                let _ = writeln!(
                    s,
                    "  per publish: first arrival median {} max {}; last arrival median {} p99 {} max {}",
                    ms(f.first_arrival_us.p50),
                    ms(f.first_arrival_us.max),
                    ms(f.last_arrival_us.p50),
                    ms(f.last_arrival_us.p99),
                    ms(f.last_arrival_us.max)
                );
            }
        }
        if let Some(st) = &self.storm {
            let _ = writeln!(
                s,
                "storm: churn {:.0}/s, {} closed on purpose, {} reconnects, {} outage(s){}",
                st.churn_per_s,
                st.churn_closed,
                st.reconnects,
                st.outages.len(),
                st.longest_recovery_s
                    .map_or(String::new(), |l| format!(", longest recovery {l:.3} s"))
            );
            for o in st.outages.iter().take(10) {
                let _ = writeln!(
                    s,
                    "  at {:.3} s: {} down, {}",
                    o.start_s,
                    o.peak_down,
                    o.recovered_after_s
                        .map_or("not recovered".into(), |r| format!(
                            "all back after {r:.3} s"
                        ))
                );
            }
        }
        if let Some(h) = &self.handshake {
            let _ = writeln!(
                s,
                "handshakes: {} completed ({} failed) in {:.2} s with {} at once: {:.0}/s; latency {}",
                h.completed,
                h.failed,
                h.phase_s,
                h.concurrency,
                h.per_s,
                summary_line(&h.latency_us)
            );
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "tls ({}, {}, resumption {}, versions {}): {} handshakes, {} full, {} resumed{}",
                t.server_name,
                t.verify,
                if t.resumption { "on" } else { "off" },
                t.versions_offered,
                t.handshakes,
                t.full,
                t.resumed,
                reasons(&t.by_version)
            );
            let _ = writeln!(s, "  full: {}", summary_line(&t.full_us));
            let _ = writeln!(s, "  resumed: {}", summary_line(&t.resumed_us));
        }
        let _ = writeln!(s, "elapsed {:.2} s", self.elapsed_s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::PubAgg;
    use crate::counters::bump;

    #[test]
    fn outages_unite_across_processes() {
        let s = 1_000_000_000_000u64;
        let o = |a: u64, b: Option<u64>, p| Outage {
            start_ns: s + a * 1_000_000,
            end_ns: b.map(|b| s + b * 1_000_000),
            peak: p,
        };
        let rows = merge_outages(
            &[
                o(100, Some(400), 10),
                o(300, Some(900), 5),
                o(2000, Some(2100), 1),
                o(5000, None, 2),
            ],
            s,
        );
        assert_eq!(
            rows,
            vec![
                OutageRow {
                    start_s: 0.1,
                    recovered_after_s: Some(0.8),
                    peak_down: 15
                },
                OutageRow {
                    start_s: 2.0,
                    recovered_after_s: Some(0.1),
                    peak_down: 1
                },
                OutageRow {
                    start_s: 5.0,
                    recovered_after_s: None,
                    peak_down: 2
                },
            ]
        );
    }

    #[test]
    fn merging_child_reports() {
        let mut a = Counters {
            attempts: 10,
            established: 9,
            first_attempt_ns: Some(1_000_000_000),
            last_initial_ns: Some(1_500_000_000),
            initial_established: 9,
            publishes: vec![PubAgg {
                first_ns: 5,
                last_ns: 9,
                receivers: 2,
                ..PubAgg::default()
            }],
            ..Counters::default()
        };
        a.connect_hist.record_us(100);
        bump(&mut a.failed, "refused", 1);
        let mut b = Counters {
            attempts: 10,
            established: 10,
            first_attempt_ns: Some(1_100_000_000),
            last_initial_ns: Some(2_000_000_000),
            initial_established: 10,
            publishes: vec![PubAgg {
                first_ns: 3,
                last_ns: 7,
                receivers: 1,
                missing: 1,
                ..PubAgg::default()
            }],
            ..Counters::default()
        };
        b.connect_hist.record_us(300);
        bump(&mut b.dropped, "eof", 2);
        let mut m = Counters::default();
        for child in [&a, &b] {
            // As the coordinator gets them: through the pipe, as JSON.
            let line = serde_json::to_vec(child).unwrap();
            m.add(&serde_json::from_slice(&line).unwrap());
        }
        let c = m.connect_report();
        assert_eq!((c.attempts, c.established, c.failed), (20, 19, 1));
        assert_eq!(c.phase_s, 1.0);
        assert_eq!(c.rate_per_s, 19.0);
        assert_eq!(c.latency_us.count, 2);
        assert_eq!(c.latency_us.min, 100);
        assert_eq!(m.drop_report().dropped, 2);
        assert_eq!(
            m.publishes,
            vec![PubAgg {
                first_ns: 3,
                last_ns: 9,
                receivers: 3,
                missing: 1,
                ..PubAgg::default()
            }]
        );
    }
}
