//! Request targets and query strings: `split_target`, `Query::parse`, `percent_decode`.
//!
//! Invariants: no panic; the path and query are pieces of the target; a parsed query has
//! at most `MAX_QUERY_PAIRS` pairs and agrees with `pairs`; decoding borrows exactly when
//! there is nothing to decode, and a decoded component, encoded again, decodes to itself.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use protocol::query::{pairs, percent_decode, split_target, Query, QueryError, MAX_QUERY_PAIRS};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = split_target(target);
    assert!(target.starts_with(path));
    assert!(!path.contains(['?', '#']));
    if let Some(q) = query {
        assert!(!q.contains('#'));
        assert!(target[path.len()..].starts_with('?'));
        assert!(target[path.len() + 1..].starts_with(q));
    }

    let q = query.unwrap_or(target);
    match Query::parse(q) {
        Ok(parsed) => {
            assert!(parsed.len() <= MAX_QUERY_PAIRS);
            let all: Vec<_> = pairs(q)
                .collect::<Result<_, _>>()
                .expect("parse accepted it");
            assert_eq!(all.len(), parsed.len());
            for ((k, v), (pk, pv)) in all.iter().zip(parsed.iter()) {
                assert_eq!((k.as_ref(), v.as_ref()), (pk, pv));
                assert!(parsed.get(pk).is_some());
            }
        }
        Err(QueryError::TooManyPairs) => assert!(pairs(q).count() > MAX_QUERY_PAIRS),
        Err(_) => assert!(pairs(q).any(|p| p.is_err())),
    }

    for plus in [false, true] {
        match percent_decode(target, plus) {
            Ok(decoded) => {
                let needs_decoding = target.contains('%') || (plus && target.contains('+'));
                assert_eq!(matches!(decoded, Cow::Borrowed(_)), !needs_decoding);
                assert!(decoded.len() <= target.len());
                let encoded = encode(&decoded);
                assert_eq!(percent_decode(&encoded, plus).as_deref(), Ok(&*decoded));
            }
            Err(QueryError::TooManyPairs) => panic!("percent_decode counts no pairs"),
            Err(_) => assert!(target.contains('%')),
        }
    }
});

/// Percent-encodes every byte outside the unreserved set.
fn encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}
