//! The cluster's part of a hot handover (see the module doc of [`crate::cluster`], "Hot
//! handover", and [`crate::handover`]): what the old process tells its successor beyond
//! the hub's snapshot, under the handover header's `extra` key `"cluster"`.
//!
//! - `node`: the node id. The successor registers under it (`pushedge:nodes`,
//!   `pushedge:node:<id>`): the same connections stay counted once, under the same name,
//!   instead of a second node appearing while the old one's counts expire.
//! - `taken`: `[channel, epoch, seq]`, the highest seq of each stream this node knew
//!   taken (its publishers' answers included): the floor the successor re-seeds Redis
//!   with, as the old process would have.

use serde_json::{json, Map, Value};

use crate::epoch::Epoch;
use crate::shared::Shared;

/// The key of the handover header's `extra` map.
pub const EXTRA_KEY: &str = "cluster";

/// What the old process sends (`Null` outside a cluster).
pub fn export(shared: &Shared) -> Value {
    let Some(c) = &shared.cluster else {
        return Value::Null;
    };
    let taken: Vec<Value> = shared
        .hub
        .local_streams()
        .into_iter()
        .map(|(name, epoch, seq)| json!([name, epoch.as_str(), seq]))
        .collect();
    json!({"node": c.node_id, "taken": taken})
}

/// The node id the old process had, when it was a cluster node: the successor's own.
pub fn inherited_node(extra: &Map<String, Value>) -> Option<String> {
    extra
        .get(EXTRA_KEY)?
        .get("node")?
        .as_str()
        .filter(|id| !id.is_empty() && !id.bytes().any(|b| b.is_ascii_whitespace()))
        .map(str::to_string)
}

/// In the successor, its hub restored and before its feed fills in: the old process's
/// floors.
pub fn import(shared: &Shared, v: Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    if shared.cluster.is_none() {
        return Err("the old process was a cluster node, this one is not".into());
    }
    let taken = v
        .get("taken")
        .and_then(Value::as_array)
        .ok_or("no stream floors")?;
    for t in taken {
        let (Some(name), Some(epoch), Some(seq)) = (
            t.get(0).and_then(Value::as_str),
            t.get(1).and_then(Value::as_str).and_then(Epoch::parse),
            t.get(2).and_then(Value::as_u64),
        ) else {
            return Err(format!("an unreadable stream floor: {t}"));
        };
        shared.hub.note_taken(name, epoch, seq);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_inherited_only_when_usable() {
        let mut m = Map::new();
        assert_eq!(inherited_node(&m), None);
        m.insert(EXTRA_KEY.into(), json!({"node": "a-1", "taken": []}));
        assert_eq!(inherited_node(&m).as_deref(), Some("a-1"));
        m.insert(EXTRA_KEY.into(), json!({"node": "a 1"}));
        assert_eq!(inherited_node(&m), None);
        m.insert(EXTRA_KEY.into(), Value::Null);
        assert_eq!(inherited_node(&m), None);
    }
}
