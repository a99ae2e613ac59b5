//! permessage-deflate: the offer parser and the bounded inflater on arbitrary bytes, and
//! deflate / inflate round trips.
//!
//! Input layout: one byte picks the part (mod 3), the rest is its input.
//! - 0: `Sec-WebSocket-Extensions` values (split at `\n` into header fields): parsing never
//!   panics; an agreement has window bits 9-15; the answer is one well-formed line.
//! - 1: a compressed payload: inflating never panics and never appends more than
//!   the limit + 1 bytes; the inflater is usable again after any outcome.
//! - 2: a message: deflated (window 9-15 from the next byte) and inflated, it comes back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ws::deflate::{
    compressor, deflate, inflate, inflater, negotiate, offers, write_response_header, InflateError,
    MAX_WINDOW_BITS, MIN_WINDOW_BITS,
};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let fields: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
            let parsed = offers(fields.iter().copied());
            if let Some(a) = negotiate(fields.iter().copied()) {
                assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&a.window_bits));
                assert!(parsed.iter().any(|o| o.is_ok()));
                let mut out = Vec::new();
                write_response_header(&mut out, &a);
                assert!(out.ends_with(b"\r\n"));
                assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            }
        }
        1 => {
            let mut d = inflater();
            let mut out = vec![1, 2, 3];
            match inflate(&mut d, rest, LIMIT, &mut out) {
                Ok(()) => assert!(out.len() <= 3 + LIMIT),
                Err(InflateError::TooBig) => assert!(out.len() <= 3 + LIMIT + 1),
                Err(InflateError::Corrupt) => {}
            }
            assert_eq!(&out[..3], [1, 2, 3], "what was there is kept");
            out.clear();
            inflate(
                &mut d,
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                10,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, b"Hello");
        }
        _ => {
            let Some((&w, msg)) = rest.split_first() else {
                return;
            };
            let bits = MIN_WINDOW_BITS + w % (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1);
            let mut c = compressor(1 + u32::from(w >> 4) % 9, bits);
            let mut z = Vec::new();
            deflate(&mut c, msg, &mut z);
            let mut d = inflater();
            let mut out = Vec::new();
            inflate(&mut d, &z, msg.len(), &mut out).unwrap();
            assert_eq!(out, msg);
        }
    }
});
