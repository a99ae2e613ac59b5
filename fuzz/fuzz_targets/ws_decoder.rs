//! The WebSocket frame decoder, as a state machine fed a sequence of reads.
//!
//! Input layout (read with `arbitrary::Unstructured`): one byte, the number of cut points
//! (0-8); two bytes per cut point (a position in the wire bytes); the rest is the wire
//! bytes. So a seed is `0x00` followed by frames.
//!
//! The reads go to four decoders: server and client role, each with a small and a large
//! `max_message`. Invariants: progress on non-empty input and never more than was given;
//! text is UTF-8; messages within the limit; control payloads within 125 bytes; close codes
//! valid on the wire; buffered bytes bounded; and the events and the final result are the
//! same as when the wire bytes arrive in one read.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use protocol::ws::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use protocol::ws::{DataKind, Decoder, DecoderConfig, Event, Role, WsError};

const CONFIGS: [DecoderConfig; 4] = [
    DecoderConfig {
        role: Role::Server,
        max_message: 100,
        skip_oversized: false,
    },
    DecoderConfig {
        role: Role::Server,
        max_message: 1 << 20,
        skip_oversized: false,
    },
    DecoderConfig {
        role: Role::Client,
        max_message: 100,
        skip_oversized: false,
    },
    DecoderConfig {
        role: Role::Client,
        max_message: 1 << 20,
        skip_oversized: false,
    },
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(count) = u.int_in_range(0u8..=8) else {
        return;
    };
    let mut cuts = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        match u.arbitrary::<u16>() {
            Ok(c) => cuts.push(usize::from(c)),
            Err(_) => return,
        }
    }
    let wire = u.take_rest();
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut reads = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for c in cuts {
        reads.push(&wire[start..c]);
        start = c;
    }
    reads.push(&wire[start..]);

    for cfg in &CONFIGS {
        let split = run(&reads, cfg);
        let whole = run(&[wire], cfg);
        assert_eq!(split, whole, "the split changed the outcome ({cfg:?})");
    }
});

/// Events decoded, and the error that stopped decoding, if any.
type Outcome = (Vec<Event<'static>>, Option<WsError>);

fn run(reads: &[&[u8]], cfg: &DecoderConfig) -> Outcome {
    let mut d = Decoder::new();
    let mut events = Vec::new();
    for read in reads {
        let mut buf = read.to_vec();
        let len = buf.len();
        let mut pos = 0;
        while pos < len {
            let r = match d.decode(&mut buf[pos..], cfg) {
                Ok(r) => r,
                Err(e) => return (events, Some(e)),
            };
            assert!(r.consumed > 0, "no progress on non-empty input");
            assert!(r.consumed <= len - pos, "consumed more than given");
            pos += r.consumed;
            if let Some(e) = r.event {
                check_event(&e, cfg);
                events.push(e.into_owned());
            }
            assert!(
                d.buffered() <= cfg.max_message + MAX_CONTROL_PAYLOAD + MAX_HEADER_LEN,
                "buffered {} bytes",
                d.buffered()
            );
            if d.is_idle() {
                assert_eq!(d.buffered(), 0);
            }
        }
    }
    (events, None)
}

fn check_event(e: &Event<'_>, cfg: &DecoderConfig) {
    match e {
        Event::Message { kind, data } => {
            assert!(data.len() <= cfg.max_message, "message over the limit");
            if *kind == DataKind::Text {
                assert!(std::str::from_utf8(data).is_ok(), "text is not UTF-8");
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
        Event::Close(Some(c)) => {
            assert!(c.code.is_valid_on_wire());
            assert!(2 + c.reason.len() <= MAX_CONTROL_PAYLOAD);
        }
        Event::Close(None) => {}
        Event::Skipped { len, .. } => {
            assert!(cfg.skip_oversized, "skipped without skip_oversized");
            assert!(*len > cfg.max_message as u64, "skipped a message within the limit");
        }
    }
}
