//! The SSE resume cursor (`Last-Event-ID: news:12@k3x9ab2q,chat:40`).
//!
//! Invariants: no panic; an accepted cursor has 1..=max entries with valid, distinct
//! channel names; writing it back and parsing again gives the same entries, and the
//! written form is accepted as an SSE `id`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::message::validate_channel;
use protocol::sse::{parse_cursor, write_cursor, write_event, Event, DEFAULT_MAX_CURSOR_ENTRIES};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = parse_cursor(s, DEFAULT_MAX_CURSOR_ENTRIES) else {
        return;
    };
    assert!(!entries.is_empty() && entries.len() <= DEFAULT_MAX_CURSOR_ENTRIES);
    for (i, (name, _)) in entries.iter().enumerate() {
        assert!(validate_channel(name).is_ok(), "{name:?}");
        assert!(
            !entries[..i].iter().any(|(n, _)| n == name),
            "duplicate {name:?}"
        );
    }

    for (_, pos) in &entries {
        if let Some(e) = pos.epoch {
            assert!(protocol::cursor::is_valid_epoch(e), "{e:?}");
        }
    }

    let mut out = Vec::new();
    write_cursor(
        &mut out,
        entries
            .iter()
            .map(|(n, p)| (*n, p.seq, p.epoch.unwrap_or(""))),
    );
    let written = std::str::from_utf8(&out).expect("a cursor is ASCII");
    let again = parse_cursor(written, DEFAULT_MAX_CURSOR_ENTRIES)
        .unwrap_or_else(|e| panic!("{written:?} does not parse back: {e}"));
    assert_eq!(again, entries);

    let mut ev = Vec::new();
    let event = Event {
        id: Some(written),
        ..Event::default()
    };
    assert!(write_event(&mut ev, &event).is_ok());
});
