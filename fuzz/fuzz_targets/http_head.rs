//! Request heads and bodies: `parse_request`, then `body_framing`, then `ChunkedDecoder` on
//! whatever follows the head.
//!
//! Invariants: no panic; a complete head lies within the input and the limits, and each of
//! its strict prefixes is `Partial`; errors map to the statuses the server may send; the
//! chunked decoder gives the same result fed whole or byte by byte, never decodes more than
//! its limit and never consumes bytes after the end of the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::http::{
    body_framing, parse_request, BodyFraming, ChunkedDecoder, HttpError, Limits, Parsed,
    DEFAULT_MAX_HEADERS, EMPTY_HEADER,
};

/// A small body limit, so the too-large paths are reached too.
const MAX_BODY: usize = 512;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_body_bytes: MAX_BODY,
        ..Limits::default()
    };
    let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
    let req = match parse_request(data, &mut headers, &limits) {
        Ok(Parsed::Complete(req)) => req,
        Ok(Parsed::Partial) => {
            assert!(data.len() <= limits.max_head_bytes);
            return;
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 431 | 501 | 505), "{e:?}");
            return;
        }
    };
    assert!(req.head_len > 0 && req.head_len <= data.len());
    assert!(req.head_len <= limits.max_head_bytes);
    assert!(req.headers.len() <= limits.max_headers);
    assert!(!req.target.is_empty());
    assert!(req.version <= 1);
    let (path, query) = (req.path(), req.query());
    assert!(path.len() + query.len() <= req.target.len());
    let _ = req.keep_alive();
    for prefix in [req.head_len - 1, req.head_len / 2] {
        let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
        assert!(
            matches!(
                parse_request(&data[..prefix], &mut headers, &limits),
                Ok(Parsed::Partial)
            ),
            "strict prefix {prefix} of a complete head is not Partial"
        );
    }

    let rest = &data[req.head_len..];
    match body_framing(&req, &limits) {
        Ok(BodyFraming::None) => {}
        Ok(BodyFraming::Length(n)) => assert!(n > 0 && n <= MAX_BODY as u64),
        Ok(BodyFraming::Chunked) => dechunk(rest),
        Err(e) => assert!(matches!(e.status(), 400 | 413 | 501), "{e:?}"),
    }
});

/// Decodes `body` whole and byte by byte; both must agree.
fn dechunk(body: &[u8]) {
    let whole = decode_whole(body);
    let bytewise = decode_bytewise(body);
    assert_eq!(whole, bytewise, "split changed the result");
    if let Ok((used, done, out)) = &whole {
        assert!(*used <= body.len());
        assert!(out.len() <= MAX_BODY);
        if !done {
            assert_eq!(
                *used,
                body.len(),
                "an unfinished body consumes all its input"
            );
        }
    }
}

type Outcome = Result<(usize, bool, Vec<u8>), HttpError>;

fn decode_whole(body: &[u8]) -> Outcome {
    let mut d = ChunkedDecoder::new(MAX_BODY);
    let mut out = Vec::new();
    let (used, done) = d.decode(body, &mut out)?;
    assert_eq!(done, d.is_done());
    Ok((used, done, out))
}

fn decode_bytewise(body: &[u8]) -> Outcome {
    let mut d = ChunkedDecoder::new(MAX_BODY);
    let mut out = Vec::new();
    let mut used = 0;
    for b in body {
        if d.is_done() {
            break;
        }
        let (n, _) = d.decode(std::slice::from_ref(b), &mut out)?;
        assert_eq!(n, 1, "one byte before the end is always consumed");
        used += n;
    }
    Ok((used, d.is_done(), out))
}
