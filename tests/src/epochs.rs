//! Stream epochs: recognising them ([`is_epoch`]) and stripping them from messages and
//! cursors ([`no_epoch`], [`no_epochs_in_cursor`]) for assertions about the rest.

use serde_json::Value;

/// True for an epoch of the form the server writes: 1-16 characters of `0-9 a-z`.
pub fn is_epoch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// `v` without its `"epoch"` fields (in an object, or in each object of an array), each
/// checked to be a valid epoch first: for assertions about the other fields. Tests about
/// epochs compare them exactly.
pub fn no_epoch(mut v: Value) -> Value {
    match &mut v {
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = no_epoch(item.take());
            }
        }
        Value::Object(map) => {
            if let Some(e) = map.remove("epoch") {
                let e = e
                    .as_str()
                    .unwrap_or_else(|| panic!("epoch is not a string: {e}"));
                assert!(is_epoch(e), "bad epoch {e:?}");
            }
        }
        _ => {}
    }
    v
}

/// A resume cursor without its `@epoch` parts (`a:1@x,b:2@y` -> `a:1,b:2`), each checked
/// to be a valid epoch first.
pub fn no_epochs_in_cursor(cursor: &str) -> String {
    cursor
        .split(',')
        .map(|entry| {
            let (name, pos) = entry.rsplit_once(':').unwrap_or((entry, ""));
            match pos.split_once('@') {
                Some((seq, e)) => {
                    assert!(is_epoch(e), "bad epoch {e:?} in cursor {cursor:?}");
                    format!("{name}:{seq}")
                }
                None => entry.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
