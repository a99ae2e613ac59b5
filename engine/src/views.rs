//! The JSON views that the admin API and the control socket both answer with: server
//! totals, one channel's figures, a channel in a listing.

use crate::hub::{ChannelInfo, HubError};
use crate::shared::Shared;

pub fn channel_json(c: &ChannelInfo) -> serde_json::Value {
    let mut v = serde_json::json!({
        "channel": c.name,
        "seq": c.seq,
        "subscribers": c.subscribers,
        "buffered": c.buffered,
    });
    if c.epoch.is_some() {
        v["epoch"] = c.epoch.as_str().into();
    }
    v
}

/// Server totals as JSON (also used by the control socket's `stats`).
pub fn totals_json(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot();
    let t = shared.hub.totals();
    let mut by_transport = serde_json::Map::new();
    for tr in crate::metrics::Transport::ALL {
        by_transport.insert(tr.as_str().into(), snap.conns[tr as usize].into());
    }
    serde_json::json!({
        "type": "info",
        "node": shared.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "workers": shared.inboxes.len(),
        "connections": snap.connections(),
        "by_transport": by_transport,
        "channels": t.channels,
        "subscriptions": t.subscriptions,
        "buffered": t.buffered,
        "published": shared.hub.published.load(std::sync::atomic::Ordering::Relaxed),
        "delivered": snap.get(crate::metrics::Counter::Delivered),
        "slow_consumer_closes": snap.get(crate::metrics::Counter::SlowConsumer),
        "draining": shared.draining.load(std::sync::atomic::Ordering::Relaxed),
        "cluster": shared.cluster.as_ref().map(|c| cluster_json(c)),
        "history_store": shared.hub.store().map(|s| serde_json::json!({
            "batches": s.batches.load(std::sync::atomic::Ordering::Relaxed),
            "committed": s.committed(),
            "failed": s.failed(),
        })),
        "idempotency_evicted": shared.hub.idem_evicted.load(std::sync::atomic::Ordering::Relaxed),
        "drain": crate::control::drain_progress(shared),
    })
}

/// One channel's figures as JSON (zeros for an unknown channel); cluster-wide in a
/// cluster, with `"cluster"` saying whether Redis could be asked.
pub fn channel_info_json(shared: &Shared, name: &str) -> Result<serde_json::Value, HubError> {
    let (info, cluster) = shared.channel_info(name)?;
    let mut v = serde_json::json!({
        "type": "info",
        "channel": info.name,
        "seq": info.seq,
        "subscribers": info.subscribers,
        "buffered": info.buffered,
    });
    if info.epoch.is_some() {
        v["epoch"] = info.epoch.as_str().into();
    }
    match cluster {
        None => {}
        Some(Ok(())) => {
            v["cluster"] = "ok".into();
            v["local_subscribers"] = shared.hub.info(name).map_or(0, |i| i.subscribers).into();
        }
        Some(Err(e)) => {
            v["cluster"] = format!("unavailable: {e}").into();
        }
    }
    Ok(v)
}

/// This node's link to Redis, and every node Redis knew of at the last report: `up` when
/// it reported within `NODE_TTL` (the others' feed figures are theirs, not known here).
fn cluster_json(c: &crate::cluster::Cluster) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let redis = if c.up.load(Relaxed) { "up" } else { "down" };
    let now = crate::worker::http::unix_now();
    let mut nodes = vec![serde_json::json!({
        "node": c.node_id,
        "redis": redis,
        "received": c.received.load(Relaxed),
        "errors": c.errors.load(Relaxed),
    })];
    let seen = c.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (node, at) in seen.into_iter().filter(|(n, _)| *n != c.node_id) {
        let live = now.saturating_sub(at) <= crate::limits::NODE_TTL;
        nodes.push(serde_json::json!({
            "node": node,
            "redis": if live { "up" } else { "down" },
            "received": null,
            "errors": null,
            "seen_secs_ago": now.saturating_sub(at),
        }));
    }
    serde_json::json!({
        "node": c.node_id,
        "redis": redis,
        "received": c.received.load(Relaxed),
        "errors": c.errors.load(Relaxed),
        "nodes": nodes,
    })
}
