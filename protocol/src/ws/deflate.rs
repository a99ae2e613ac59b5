//! permessage-deflate (RFC 7692), sans-IO: the negotiation (a client's
//! `Sec-WebSocket-Extensions` offers, the server's answer) and the per-message deflate and
//! bounded inflate on `flate2` (raw deflate, no zlib header).
//!
//! # What a server built on this negotiates
//!
//! The design is for a push server, where one published message goes to many subscribers:
//!
//! - The answer **always** carries `server_no_context_takeover`: every outgoing message is
//!   compressed on its own (the compressor is reset per message), so the compressed frame
//!   of a message is the same for every subscriber that negotiated the same window bits
//!   and can be made once and shared. RFC 7692 section 7.1.1.1 lets a server include it
//!   whether or not the client asked.
//! - It **always** carries `client_no_context_takeover` (section 7.1.1.2 lets a server
//!   include it): the client resets its compressor per message too, so the server needs
//!   no inflater per connection, only one per thread, reset before each message.
//!
//! So a connection that negotiated the extension keeps no compression state at all: its
//! whole negotiated state is its server window bits, 9 to 15 ([`Agreed::window_bits`]),
//! three bits in the caller's record.
//!
//! - `server_max_window_bits=N` is honoured: outgoing messages are compressed with a
//!   window of 2^N bytes and the answer repeats `server_max_window_bits=N`. zlib (and so
//!   `flate2`) cannot make raw deflate with an 8-bit window, and section 7.1.2.1 allows
//!   the answer only "the same or smaller value", so an offer with
//!   `server_max_window_bits=8` is **declined** (the next offer is tried); answering 9
//!   would break the client's limit.
//! - `client_max_window_bits` (with or without a value) is accepted and not answered:
//!   the server's inflater has a 15-bit window, which inflates whatever window the client
//!   uses (section 7.1.2.2 lets the server omit it from the answer).
//! - An offer with an unknown parameter, a parameter given twice, a value where none is
//!   allowed, a missing or invalid value (`server_max_window_bits` needs one of 8-15,
//!   unquoted or quoted), or a syntax error is unacceptable (section 7.1); the first
//!   acceptable offer of the extension wins, and with none the extension is not used.
//!
//! # Messages
//!
//! [`deflate`] compresses a whole message (resetting the compressor first) and strips the
//! `00 00 ff ff` tail of the final sync flush (section 7.2.1); [`inflate`] appends that
//! tail and inflates (section 7.2.2), stopping as soon as the output passes a limit
//! ([`InflateError::TooBig`]: a decompression bomb costs at most the limit, not what it
//! would expand to). [`write_compressed_frame`] writes a frame with RSV1 set.

/// The compressor and inflater types (`flate2`'s), made by [`compressor`] and [`inflater`].
pub use flate2::{Compress, Decompress};
use flate2::{Compression, FlushCompress, FlushDecompress, Status};

use super::frame::{write_frame_header, OpCode};

/// The extension's name.
pub const NAME: &str = "permessage-deflate";
/// What a final sync flush ends with, removed from (and added back to) every message.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The smallest server window this implementation compresses with (zlib's raw deflate
/// has no 8-bit window).
pub const MIN_WINDOW_BITS: u8 = 9;
/// The largest window of RFC 7692 (32 KiB), the default.
pub const MAX_WINDOW_BITS: u8 = 15;
/// How much output [`inflate`] adds at a time (its buffer grows by at most this much, or
/// by what it already holds, up to the limit).
const INFLATE_STEP: usize = 16 * 1024;

/// What was agreed with a client: the window the server compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server's window bits, [`MIN_WINDOW_BITS`]..=[`MAX_WINDOW_BITS`].
    pub window_bits: u8,
    /// The client asked for `server_max_window_bits` (the answer repeats it).
    pub window_asked: bool,
}

/// One parsed offer of `permessage-deflate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offer {
    /// `server_no_context_takeover`.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits=N` (8-15).
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits`, with its value if it had one.
    pub client_max_window_bits: Option<Option<u8>>,
}

impl Offer {
    /// What this server agrees to for this offer; `None` when it cannot honour it
    /// (`server_max_window_bits=8`).
    pub fn agree(&self) -> Option<Agreed> {
        match self.server_max_window_bits {
            None => Some(Agreed {
                window_bits: MAX_WINDOW_BITS,
                window_asked: false,
            }),
            Some(n) if n >= MIN_WINDOW_BITS => Some(Agreed {
                window_bits: n,
                window_asked: true,
            }),
            Some(_) => None,
        }
    }
}

/// Why an offer of `permessage-deflate` is unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferError {
    /// The element does not follow the header's grammar.
    Syntax,
    /// A parameter this extension does not define.
    UnknownParam,
    /// A parameter given twice.
    Duplicate,
    /// A value that is missing, not allowed, or out of range.
    BadValue,
}

/// Splits a header value at the commas (or semicolons) outside quoted strings.
fn split_top(s: &[u8], sep: u8) -> Result<Vec<&[u8]>, OfferError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err(OfferError::Syntax);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// An RFC 7230 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A parameter value: a token, or a quoted string (unquoted). RFC 7692 section 7.1
/// wants the unquoted value to follow the parameter's own grammar (here: digits).
fn param_value(v: &[u8]) -> Result<Vec<u8>, OfferError> {
    if let Some(inner) = v.strip_prefix(b"\"") {
        let inner = inner.strip_suffix(b"\"").ok_or(OfferError::Syntax)?;
        let mut out = Vec::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            if escaped {
                out.push(b);
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                return Err(OfferError::Syntax);
            } else {
                out.push(b);
            }
        }
        if escaped {
            return Err(OfferError::Syntax);
        }
        Ok(out)
    } else if is_token(v) {
        Ok(v.to_vec())
    } else {
        Err(OfferError::Syntax)
    }
}

/// Window bits as RFC 7692 writes them: `8`-`15`, no sign, no leading zero.
fn window_bits(v: &[u8]) -> Result<u8, OfferError> {
    match v {
        [d @ b'8'..=b'9'] => Ok(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Ok(10 + d - b'0'),
        _ => Err(OfferError::BadValue),
    }
}

/// Parses the parameters of one `permessage-deflate` element (what follows its name).
pub fn parse_offer(params: &[&[u8]]) -> Result<Offer, OfferError> {
    let mut offer = Offer::default();
    for raw in params {
        let (name, value) = match raw.iter().position(|&b| b == b'=') {
            Some(eq) => (trim(&raw[..eq]), Some(param_value(trim(&raw[eq + 1..]))?)),
            None => (trim(raw), None),
        };
        if !is_token(name) {
            return Err(OfferError::Syntax);
        }
        let name = name.to_ascii_lowercase();
        match &name[..] {
            b"server_no_context_takeover" | b"client_no_context_takeover" => {
                if value.is_some() {
                    return Err(OfferError::BadValue);
                }
                let flag = if name.starts_with(b"server") {
                    &mut offer.server_no_context_takeover
                } else {
                    &mut offer.client_no_context_takeover
                };
                if std::mem::replace(flag, true) {
                    return Err(OfferError::Duplicate);
                }
            }
            b"server_max_window_bits" => {
                let bits = window_bits(value.as_deref().ok_or(OfferError::BadValue)?)?;
                if offer.server_max_window_bits.replace(bits).is_some() {
                    return Err(OfferError::Duplicate);
                }
            }
            b"client_max_window_bits" => {
                let bits = value.as_deref().map(window_bits).transpose()?;
                if offer.client_max_window_bits.replace(bits).is_some() {
                    return Err(OfferError::Duplicate);
                }
            }
            _ => return Err(OfferError::UnknownParam),
        }
    }
    Ok(offer)
}

/// Every `permessage-deflate` offer in the `Sec-WebSocket-Extensions` field values (in
/// order, each field a comma-separated list), parsed; other extensions are skipped.
pub fn offers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Offer, OfferError>> {
    let mut out = Vec::new();
    for value in values {
        let Ok(elements) = split_top(value, b',') else {
            // An unterminated quote: nothing in this field can be trusted.
            out.push(Err(OfferError::Syntax));
            continue;
        };
        for element in elements {
            let element = trim(element);
            if element.is_empty() {
                continue; // `a, , b`: empty list elements are allowed (RFC 7230 7).
            }
            let parts = split_top(element, b';').expect("quotes balanced within the field");
            if !trim(parts[0]).eq_ignore_ascii_case(NAME.as_bytes()) {
                continue;
            }
            out.push(parse_offer(&parts[1..]));
        }
    }
    out
}

/// The first acceptable offer's agreement, or `None` (the extension is not used).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    offers(values)
        .into_iter()
        .find_map(|o| o.ok().and_then(|o| o.agree()))
}

/// Writes the answer's header line, CRLF included:
/// `Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;
/// client_no_context_takeover[; server_max_window_bits=N]`.
pub fn write_response_header(out: &mut Vec<u8>, agreed: &Agreed) {
    out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if agreed.window_asked {
        out.extend_from_slice(b"; server_max_window_bits=");
        out.extend_from_slice(agreed.window_bits.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A raw-deflate compressor for a window of `window_bits` (clamped to 9-15), at `level`
/// (0-9). Reused for every message: [`deflate`] resets it.
pub fn compressor(level: u32, window_bits: u8) -> Compress {
    let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    Compress::new_with_window_bits(Compression::new(level.min(9)), false, bits)
}

/// A raw-deflate inflater with a 15-bit window (it inflates any window). Reused for
/// every message: [`inflate`] resets it.
pub fn inflater() -> Decompress {
    Decompress::new_with_window_bits(false, MAX_WINDOW_BITS)
}

/// Compresses `input` as one message (the compressor reset first: no context taken
/// over) and appends it to `out`, without the `00 00 ff ff` tail.
pub fn deflate(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    c.reset();
    let start = out.len();
    out.reserve(input.len() / 2 + 16);
    let mut pos = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let before = c.total_in();
        c.compress_vec(&input[pos..], out, FlushCompress::Sync)
            .expect("deflate with a sync flush cannot fail on a valid stream");
        pos += (c.total_in() - before) as usize;
        // Done when all input is in and the flush did not run out of room.
        if pos == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    debug_assert!(out[start..].ends_with(&TAIL), "a sync flush ends so");
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The output passed the limit (the caller closes with 1009).
    TooBig,
    /// Not valid deflate data (the caller fails the connection: 1007).
    Corrupt,
}

/// Inflates one message (`input` without its tail; the inflater reset first) and
/// appends it to `out`. Stops as soon as what it appended passes `limit` bytes: `out`
/// never grows by more than `limit + 1` bytes (plus what it held).
pub fn inflate(
    d: &mut Decompress,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    d.reset(false);
    let start = out.len();
    let cap = start + limit + 1;
    let mut written = out.len();
    for part in [input, &TAIL[..]] {
        let mut pos = 0;
        loop {
            if written == out.len() {
                if out.len() >= cap {
                    out.truncate(written);
                    return Err(InflateError::TooBig);
                }
                let grow = (out.len() - start).clamp(1024, INFLATE_STEP);
                out.resize((out.len() + grow).min(cap), 0);
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress(&part[pos..], &mut out[written..], FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt);
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    out.truncate(written);
                    return Err(e);
                }
            };
            pos += (d.total_in() - in0) as usize;
            written += (d.total_out() - out0) as usize;
            if written - start > limit {
                out.truncate(written);
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL): the message ends there.
                out.truncate(written);
                return Ok(());
            }
            let progressed = d.total_in() != in0 || d.total_out() != out0;
            if pos == part.len() && written < out.len() {
                break; // all in, and output room to spare: everything is out
            }
            if !progressed && written < out.len() {
                out.truncate(written);
                return Err(InflateError::Corrupt);
            }
        }
    }
    out.truncate(written);
    Ok(())
}

/// Writes an unmasked server frame of a compressed message (RSV1 set).
pub fn write_compressed_frame(out: &mut Vec<u8>, opcode: OpCode, compressed: &[u8]) {
    let at = out.len();
    write_frame_header(out, true, opcode, compressed.len(), None);
    out[at] |= RSV1;
    out.extend_from_slice(compressed);
}

/// The RSV1 bit of a frame's first byte ("per-message compressed").
pub const RSV1: u8 = 0x40;

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(v: &str) -> Option<Agreed> {
        negotiate([v.as_bytes()])
    }

    const PLAIN: Option<Agreed> = Some(Agreed {
        window_bits: 15,
        window_asked: false,
    });

    #[test]
    fn offers_are_parsed_and_the_first_acceptable_wins() {
        assert_eq!(neg("permessage-deflate"), PLAIN);
        assert_eq!(neg("permessage-deflate; client_max_window_bits"), PLAIN);
        assert_eq!(
            neg("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10"),
            Some(Agreed {
                window_bits: 10,
                window_asked: true
            })
        );
        assert_eq!(
            neg("Permessage-Deflate; SERVER_MAX_WINDOW_BITS=\"12\"; client_no_context_takeover"),
            Some(Agreed {
                window_bits: 12,
                window_asked: true
            })
        );
        // 8 cannot be honoured: declined, the next offer is taken.
        assert_eq!(neg("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(
            neg("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
            PLAIN
        );
        // Several header fields, in order.
        assert_eq!(
            negotiate([&b"foo"[..], b"permessage-deflate; server_max_window_bits=9"]),
            Some(Agreed {
                window_bits: 9,
                window_asked: true
            })
        );
        assert_eq!(neg("foo, bar; x=1"), None);
        assert_eq!(neg(""), None);
    }

    #[test]
    fn malformed_offers_are_unacceptable() {
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate; unknown",
            "permessage-deflate; =1",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; server_max_window_bits=1\"0\"",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
            if bad.matches('"').count() % 2 == 1 {
                continue; // an open quote swallows the rest of the field
            }
            // The next offer still counts.
            assert_eq!(neg(&format!("{bad}, permessage-deflate")), PLAIN, "{bad}");
        }
        assert_eq!(
            offers([
                &b"permessage-deflate; a; b, permessage-deflate; client_max_window_bits=15"[..]
            ]),
            vec![
                Err(OfferError::UnknownParam),
                Ok(Offer {
                    client_max_window_bits: Some(Some(15)),
                    ..Offer::default()
                })
            ]
        );
        // Quoted commas do not split elements.
        assert_eq!(
            offers([&b"foo; x=\"a,b\", permessage-deflate"[..]]),
            vec![Ok(Offer::default())]
        );
    }

    #[test]
    fn the_answer_names_both_no_context_takeovers() {
        let mut out = Vec::new();
        write_response_header(&mut out, &PLAIN.unwrap());
        assert_eq!(
            out,
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        );
        out.clear();
        write_response_header(
            &mut out,
            &Agreed {
                window_bits: 9,
                window_asked: true,
            },
        );
        assert!(out.ends_with(b"; server_max_window_bits=9\r\n"));
    }

    // RFC 7692 section 7.2.3.
    #[test]
    fn rfc_examples() {
        let mut d = inflater();
        let mut out = Vec::new();
        // 7.2.3.1: "Hello" in one compressed frame.
        inflate(
            &mut d,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // Exactly at the limit is still within it.
        out.clear();
        inflate(
            &mut d,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            5,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello", "exactly at the limit");
        // 7.2.3.2: the second "Hello" with context takeover (a back-reference into the
        // first) — needs the first message's context, which a reset inflater lacks.
        out.clear();
        assert_eq!(
            inflate(&mut d, &[0xf2, 0x00, 0x11, 0x00, 0x00], 100, &mut out),
            Err(InflateError::Corrupt)
        );
        // 7.2.3.3: "Hello" in a DEFLATE block with no compression.
        out.clear();
        inflate(
            &mut d,
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // 7.2.3.5: two DEFLATE blocks in one message.
        out.clear();
        inflate(
            &mut d,
            &[
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
            ],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // 7.2.3.4: a DEFLATE block with BFINAL set: the message ends there (what follows
        // it, the padding byte and the tail, is ignored).
        out.clear();
        inflate(
            &mut d,
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // An empty message: one empty stored block, completed by the tail.
        out.clear();
        inflate(&mut d, &[0x00], 100, &mut out).unwrap();
        assert!(out.is_empty());
        // Our deflater makes 7.2.3.1's bytes for "Hello" at the default level.
        let mut c = compressor(6, 15);
        let mut z = Vec::new();
        deflate(&mut c, b"Hello", &mut z);
        assert_eq!(z, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn inflate_stops_at_the_limit() {
        let mut c = compressor(9, 15);
        let big = vec![b'a'; 10_000_000];
        let mut z = Vec::new();
        deflate(&mut c, &big, &mut z);
        assert!(z.len() < 20_000, "a bomb: {} bytes", z.len());
        let mut d = inflater();
        let mut out = b"kept".to_vec();
        assert_eq!(
            inflate(&mut d, &z, 65_536, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.len() <= 4 + 65_537 && out.capacity() < 200_000);
        out.clear();
        inflate(&mut d, &z, big.len(), &mut out).unwrap();
        assert_eq!(out.len(), big.len());
        out.clear();
        assert_eq!(
            inflate(&mut d, &z, big.len() - 1, &mut out),
            Err(InflateError::TooBig)
        );
        // Garbage.
        out.clear();
        assert_eq!(
            inflate(&mut d, &[0xff; 40], 1000, &mut out),
            Err(InflateError::Corrupt)
        );
        // The inflater is usable after an error.
        out.clear();
        inflate(
            &mut d,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn small_windows_inflate_with_the_window_asked() {
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"abcdefghij"[(i * 7 % 10) as usize] ^ (i % 251 == 0) as u8)
            .collect();
        for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
            let mut c = compressor(1, bits);
            let mut z = Vec::new();
            deflate(&mut c, &text, &mut z);
            let mut d = Decompress::new_with_window_bits(false, bits);
            let mut tail = z.clone();
            tail.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(text.len() + 10);
            d.decompress_vec(&tail, &mut out, FlushDecompress::Sync)
                .unwrap_or_else(|e| panic!("window {bits}: {e}"));
            assert_eq!(out, text, "window {bits}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                // Compressible: few symbols, long runs, repeats far apart.
                (proptest::collection::vec(0u8..4, 1..64), 1usize..400).prop_map(|(unit, n)| {
                    unit.iter()
                        .cycle()
                        .take(unit.len() * n)
                        .map(|b| b"ab{}"[*b as usize])
                        .collect()
                }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn deflate_then_inflate_is_the_identity(
                data in text(),
                level in 0u32..=9,
                bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS,
            ) {
                let mut c = compressor(level, bits);
                let mut z = Vec::new();
                deflate(&mut c, &data, &mut z);
                // Our inflater (15 bits) and one with the client's window.
                let mut out = Vec::new();
                inflate(&mut inflater(), &z, data.len(), &mut out).unwrap();
                prop_assert_eq!(&out, &data);
                let mut narrow = Decompress::new_with_window_bits(false, bits);
                let mut out = Vec::new();
                inflate(&mut narrow, &z, data.len(), &mut out).unwrap();
                prop_assert_eq!(&out, &data);
                // The compressor is reused: the same message compresses the same again.
                let mut again = Vec::new();
                deflate(&mut c, &data, &mut again);
                prop_assert_eq!(again, z);
            }

            #[test]
            fn inflate_fails_exactly_past_the_limit(data in text(), cut in any::<prop::sample::Index>()) {
                let mut z = Vec::new();
                deflate(&mut compressor(1, 15), &data, &mut z);
                let limit = cut.index(data.len() + 1);
                let mut out = Vec::new();
                let r = inflate(&mut inflater(), &z, limit, &mut out);
                if data.len() > limit {
                    prop_assert_eq!(r, Err(InflateError::TooBig));
                    prop_assert!(out.len() <= limit + 1);
                } else {
                    prop_assert_eq!(r, Ok(()));
                    prop_assert_eq!(out, data);
                }
            }

            #[test]
            fn offers_never_panic_and_agreements_are_in_range(header in ".{0,200}") {
                if let Some(a) = negotiate([header.as_bytes()]) {
                    prop_assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&a.window_bits));
                }
            }

            #[test]
            fn written_offers_parse_back(
                snct in any::<bool>(),
                cnct in any::<bool>(),
                smwb in proptest::option::of(8u8..=15),
                cmwb in proptest::option::of(proptest::option::of(8u8..=15)),
                quote in any::<bool>(),
            ) {
                let mut params = Vec::new();
                if snct { params.push("server_no_context_takeover".to_string()); }
                if cnct { params.push("client_no_context_takeover".to_string()); }
                let v = |n: u8| if quote { format!("\"{n}\"") } else { n.to_string() };
                if let Some(n) = smwb { params.push(format!("server_max_window_bits={}", v(n))); }
                match cmwb {
                    Some(Some(n)) => params.push(format!("client_max_window_bits={}", v(n))),
                    Some(None) => params.push("client_max_window_bits".into()),
                    None => {}
                }
                let header = std::iter::once("permessage-deflate".to_string())
                    .chain(params)
                    .collect::<Vec<_>>()
                    .join(" ; ");
                let expected = Offer {
                    server_no_context_takeover: snct,
                    client_no_context_takeover: cnct,
                    server_max_window_bits: smwb,
                    client_max_window_bits: cmwb,
                };
                prop_assert_eq!(offers([header.as_bytes()]), vec![Ok(expected)]);
                let agreed = negotiate([header.as_bytes()]);
                prop_assert_eq!(agreed.is_some(), smwb != Some(8));
            }
        }
    }

    #[test]
    fn compressed_frames_carry_rsv1() {
        let mut out = Vec::new();
        write_compressed_frame(&mut out, OpCode::Text, &[1, 2, 3]);
        assert_eq!(out, [0xC1, 3, 1, 2, 3]);
    }
}
