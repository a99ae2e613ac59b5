//! `GET /events`: the dashboard's feed, one stats snapshot a second as a Server-Sent
//! Event (`data: {json}`), and `GET /dashboard`, the page that shows it
//! (`engine/static/dashboard.html`, no external resources). The streaming connections
//! themselves are held by the admin loop ([`super`]).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::limits::EVENTS_MAX_RATE_SPAN;
use crate::metrics::{unix_now, Counter, Histogram, Process};
use crate::shared::Shared;
use crate::views::totals_json;

/// The page (`include_str!`: no build step).
pub(super) const DASHBOARD: &str = include_str!("../../static/dashboard.html");

/// What the page may do: its own inline script and style, `/events` on this origin.
pub(super) const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The start of a stream: how long a browser waits before reconnecting (ms).
pub(super) const PREAMBLE: &[u8] = b"retry: 2000\n\n";

/// The counters a snapshot's rates are computed against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    at: Instant,
    delivered: u64,
    published: u64,
    cpu: Option<f64>,
    fanout: Histogram,
}

fn ms(secs: Option<f64>) -> serde_json::Value {
    secs.map_or(serde_json::Value::Null, |s| json!((s * 1e6).round() / 1e3))
}

fn per_sec(now: u64, then: u64, span: f64) -> serde_json::Value {
    json!(((now.saturating_sub(then)) as f64 / span * 10.0).round() / 10.0)
}

/// The counters now: the base of the rates of the next snapshot (a stream that starts
/// when none was open gets rates over its first second).
pub(super) fn sample(shared: &Shared) -> Sample {
    let snap = shared.snapshot();
    Sample {
        at: Instant::now(),
        delivered: snap.get(Counter::Delivered),
        published: shared
            .hub
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        cpu: Process::read().cpu_seconds,
        fanout: snap.fanout,
    }
}

/// One event (`data: {...}\n\n`) and the sample it was made from. `prev`: the sample of
/// the previous one; rates, CPU and the recent fan-out quantiles are over the time since
/// (null without one, or after more than [`EVENTS_MAX_RATE_SPAN`]).
pub(super) fn snapshot(shared: &Shared, prev: Option<&Sample>) -> (Vec<u8>, Sample) {
    let mut v = totals_json(shared);
    let snap = shared.snapshot();
    let proc = Process::read();
    let now = Instant::now();
    let sample = Sample {
        at: now,
        delivered: snap.get(Counter::Delivered),
        published: shared
            .hub
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        cpu: proc.cpu_seconds,
        fanout: snap.fanout,
    };
    let prev = prev.filter(|p| {
        let span = now.saturating_duration_since(p.at);
        span > Duration::ZERO && span <= EVENTS_MAX_RATE_SPAN
    });
    let rates = match prev {
        Some(p) => {
            let span = now.saturating_duration_since(p.at).as_secs_f64();
            let cpu = match (sample.cpu, p.cpu) {
                (Some(a), Some(b)) => json!((((a - b).max(0.0) / span) * 1000.0).round() / 10.0),
                _ => serde_json::Value::Null,
            };
            json!({
                "span_secs": (span * 1000.0).round() / 1000.0,
                "deliveries_per_sec": per_sec(sample.delivered, p.delivered, span),
                "publishes_per_sec": per_sec(sample.published, p.published, span),
                "cpu_percent": cpu,
            })
        }
        None => json!({
            "span_secs": null,
            "deliveries_per_sec": null,
            "publishes_per_sec": null,
            "cpu_percent": null,
        }),
    };
    let recent = prev.map(|p| snap.fanout.since(&p.fanout));
    let total = snap.fanout;
    let mean = (total.count() > 0).then(|| total.sum_ns as f64 / 1e9 / total.count() as f64);
    v["type"] = "stats".into();
    v["time_ms"] = json!((unix_now() * 1000.0).round() as u64);
    v["delivered"] = sample.delivered.into();
    v["published"] = sample.published.into();
    v["limit_closes"] = snap.get(Counter::LimitCloses).into();
    v["rates"] = rates;
    v["process"] = json!({
        "rss_bytes": proc.rss_bytes,
        "open_fds": proc.open_fds,
        "max_fds": proc.max_fds,
        "cpu_seconds": proc.cpu_seconds,
        "start_time": proc.start_time,
    });
    v["fanout"] = json!({
        "recent_count": recent.map(|h| h.count()),
        "recent_p50_ms": ms(recent.and_then(|h| h.quantile(0.5))),
        "recent_p99_ms": ms(recent.and_then(|h| h.quantile(0.99))),
        "count": total.count(),
        "p50_ms": ms(total.quantile(0.5)),
        "p99_ms": ms(total.quantile(0.99)),
        "mean_ms": ms(mean),
    });
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    (out, sample)
}
