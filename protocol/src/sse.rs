//! Server-Sent Events: event encoding and the resume cursor.
//!
//! An event is written as `id:`, `event:`, `retry:` and one `data:` line per line of the
//! data (split on CRLF, CR and LF, as the EventSource parser splits them), then a blank
//! line. Comments (`: ping`) keep a stream alive without dispatching anything.
//!
//! The resume cursor is what pushedge puts in `id:` and what a browser sends back in
//! `Last-Event-ID`: the last delivered seq of every channel of the connection,
//! `news:12,chat:40`. A channel name may itself contain `:`, so each entry is split at its
//! last colon.

use std::fmt;

use crate::http::push_decimal;
use crate::message::{validate_channel, ChannelError};

/// A keep-alive comment.
pub const PING_COMMENT: &[u8] = b": ping\n\n";

/// One event to encode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// `id:` (the resume cursor); may not contain CR, LF or NUL.
    pub id: Option<&'a str>,
    /// `event:` (the event type); may not contain CR or LF.
    pub event: Option<&'a str>,
    /// The data; every line becomes one `data:` line.
    pub data: &'a str,
    /// `retry:` in milliseconds.
    pub retry: Option<u64>,
}

/// A field value that would break the event framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// `id` contains CR, LF or NUL (a browser would ignore or split it).
    BadId,
    /// `event` contains CR or LF.
    BadEventName,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SseError::BadId => "SSE id contains CR, LF or NUL",
            SseError::BadEventName => "SSE event name contains CR or LF",
        })
    }
}

impl std::error::Error for SseError {}

/// Appends one event, ended by the blank line.
pub fn write_event(out: &mut Vec<u8>, ev: &Event<'_>) -> Result<(), SseError> {
    if let Some(id) = ev.id {
        if id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(SseError::BadId);
        }
    }
    if let Some(name) = ev.event {
        if name.bytes().any(|b| matches!(b, b'\r' | b'\n')) {
            return Err(SseError::BadEventName);
        }
    }
    if let Some(id) = ev.id {
        write_id(out, id);
    }
    if let Some(name) = ev.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(ms) = ev.retry {
        write_retry_field(out, ms);
    }
    write_data(out, ev.data);
    out.push(b'\n');
    Ok(())
}

/// Appends an `id:` line. The caller guarantees `id` has no CR, LF or NUL (cursors built by
/// [`write_cursor`] never do).
pub fn write_id(out: &mut Vec<u8>, id: &str) {
    debug_assert!(!id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
}

/// Appends the `data:` lines for `data` (no blank line).
pub fn write_data(out: &mut Vec<u8>, data: &str) {
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Appends a stand-alone `retry:` event (sets the browser's reconnection delay).
pub fn write_retry(out: &mut Vec<u8>, ms: u64) {
    write_retry_field(out, ms);
    out.push(b'\n');
}

fn write_retry_field(out: &mut Vec<u8>, ms: u64) {
    out.extend_from_slice(b"retry: ");
    push_decimal(out, ms);
    out.push(b'\n');
}

/// Appends a comment (one `:` line per line of `text`) and a blank line.
pub fn write_comment(out: &mut Vec<u8>, text: &str) {
    for line in lines(text) {
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Splits on CRLF, CR and LF. An empty text is one empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// Most entries a cursor may carry by default (the engine passes its own limit).
pub const DEFAULT_MAX_CURSOR_ENTRIES: usize = 16;

/// Why a resume cursor cannot be used (the server answers 400 with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    /// The cursor is empty.
    Empty,
    /// Entry `n` (from 0) has no `:seq`.
    MissingSeq(usize),
    /// Entry `n` names an invalid channel.
    BadChannel(usize, ChannelError),
    /// Entry `n` has a seq that is not a decimal number.
    BadSeq(usize),
    /// Entry `n` repeats a channel.
    Duplicate(usize),
    /// More entries than allowed.
    TooMany,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::Empty => write!(f, "empty resume cursor"),
            CursorError::MissingSeq(i) => write!(f, "cursor entry {i} has no ':seq'"),
            CursorError::BadChannel(i, e) => write!(f, "cursor entry {i}: {e}"),
            CursorError::BadSeq(i) => write!(f, "cursor entry {i} has an invalid seq"),
            CursorError::Duplicate(i) => write!(f, "cursor entry {i} repeats a channel"),
            CursorError::TooMany => write!(f, "too many channels in resume cursor"),
        }
    }
}

impl std::error::Error for CursorError {}

/// Parses a cursor such as `news:12,chat:40` into `(channel, seq)` pairs, in order.
/// Spaces around entries are ignored.
pub fn parse_cursor(s: &str, max_entries: usize) -> Result<Vec<(&str, u64)>, CursorError> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() {
        return Err(CursorError::Empty);
    }
    let mut out: Vec<(&str, u64)> = Vec::new();
    for (i, entry) in s.split(',').enumerate() {
        if i == max_entries {
            return Err(CursorError::TooMany);
        }
        let entry = entry.trim_matches([' ', '\t']);
        let (name, seq) = entry.rsplit_once(':').ok_or(CursorError::MissingSeq(i))?;
        validate_channel(name).map_err(|e| CursorError::BadChannel(i, e))?;
        // u64::MAX has 20 digits; a 20-digit number over it fails in `parse` below.
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CursorError::BadSeq(i));
        }
        let seq: u64 = seq.parse().map_err(|_| CursorError::BadSeq(i))?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(CursorError::Duplicate(i));
        }
        out.push((name, seq));
    }
    Ok(out)
}

/// Appends a cursor (`news:12,chat:40`) for the given entries.
pub fn write_cursor<'a>(out: &mut Vec<u8>, entries: impl IntoIterator<Item = (&'a str, u64)>) {
    for (i, (name, seq)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        push_decimal(out, seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ev: &Event<'_>) -> String {
        let mut out = Vec::new();
        write_event(&mut out, ev).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_events() {
        assert_eq!(
            event(&Event {
                id: Some("news:12"),
                data: "{\"a\":1}",
                ..Default::default()
            }),
            "id: news:12\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            event(&Event {
                event: Some("update"),
                data: "one\ntwo\r\nthree\rfour",
                retry: Some(3000),
                ..Default::default()
            }),
            "event: update\nretry: 3000\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        assert_eq!(event(&Event::default()), "data: \n\n");
        assert_eq!(
            event(&Event {
                data: "trailing\n",
                ..Default::default()
            }),
            "data: trailing\ndata: \n\n"
        );
    }

    #[test]
    fn rejects_fields_that_break_framing() {
        let mut out = Vec::new();
        let bad_id = Event {
            id: Some("a\nb"),
            ..Default::default()
        };
        assert_eq!(write_event(&mut out, &bad_id), Err(SseError::BadId));
        let bad_name = Event {
            event: Some("x\ry"),
            ..Default::default()
        };
        assert_eq!(
            write_event(&mut out, &bad_name),
            Err(SseError::BadEventName)
        );
        assert!(out.is_empty(), "nothing written on error");
    }

    #[test]
    fn comments_and_retry() {
        let mut out = Vec::new();
        write_comment(&mut out, "ping");
        write_retry(&mut out, 2000);
        assert_eq!(out, b": ping\n\nretry: 2000\n\n");
        assert_eq!(&out[..8], PING_COMMENT);
    }

    #[test]
    fn parses_cursors() {
        assert_eq!(
            parse_cursor("news:12,chat:40", 16).unwrap(),
            vec![("news", 12), ("chat", 40)]
        );
        assert_eq!(
            parse_cursor(" a:b:3 , c:0 ", 16).unwrap(),
            vec![("a:b", 3), ("c", 0)]
        );
        assert_eq!(parse_cursor("", 16), Err(CursorError::Empty));
        assert_eq!(parse_cursor("news", 16), Err(CursorError::MissingSeq(0)));
        assert_eq!(parse_cursor("news:1,", 16), Err(CursorError::MissingSeq(1)));
        assert_eq!(parse_cursor("news:x", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(parse_cursor("news:-1", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(parse_cursor("news:", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(
            parse_cursor("news:99999999999999999999", 16),
            Err(CursorError::BadSeq(0))
        );
        assert!(matches!(
            parse_cursor("n w:1", 16),
            Err(CursorError::BadChannel(0, _))
        ));
        assert!(matches!(
            parse_cursor(":1", 16),
            Err(CursorError::BadChannel(0, _))
        ));
        assert_eq!(parse_cursor("a:1,a:2", 16), Err(CursorError::Duplicate(1)));
        assert_eq!(parse_cursor("a:1,b:2,c:3", 2), Err(CursorError::TooMany));
        assert!(CursorError::BadSeq(2).to_string().contains("entry 2"));
    }

    #[test]
    fn cursor_round_trip() {
        let mut out = Vec::new();
        write_cursor(&mut out, [("news", 12), ("a:b", 0)]);
        assert_eq!(out, b"news:12,a:b:0");
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            parse_cursor(&s, 16).unwrap(),
            vec![("news", 12), ("a:b", 0)]
        );
    }

    #[test]
    fn cursor_round_trip_at_the_largest_seqs() {
        // Regression: seqs of 20 digits (>= 10^19) were written but refused on the way back.
        let mut out = Vec::new();
        write_cursor(
            &mut out,
            [("a", u64::MAX), ("b", 10_000_000_000_000_000_000)],
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, "a:18446744073709551615,b:10000000000000000000");
        assert_eq!(
            parse_cursor(&s, 16).unwrap(),
            vec![("a", u64::MAX), ("b", 10_000_000_000_000_000_000)]
        );
        assert_eq!(
            parse_cursor("a:18446744073709551616", 16),
            Err(CursorError::BadSeq(0))
        );
        assert_eq!(
            parse_cursor("a:000000000000000000001", 16),
            Err(CursorError::BadSeq(0))
        );
    }
}
