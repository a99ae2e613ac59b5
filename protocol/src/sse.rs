//! Server-Sent Events: event encoding and the resume cursor.
//!
//! An event is written as `id:`, `event:`, `retry:` and one `data:` line per line of the
//! data (split on CRLF, CR and LF, as the EventSource parser splits them), then a blank
//! line. Comments (`: ping`) keep a stream alive without dispatching anything.
//!
//! The resume cursor that pushedge puts in `id:` and a browser sends back in
//! `Last-Event-ID` (`news:12@k3x9ab2q,chat:40@p0q1r2s3`) is in [`crate::cursor`]; it is
//! re-exported here.

use std::fmt;

use crate::http::push_decimal;

pub use crate::cursor::{
    parse_cursor, write_cursor, CursorError, Position, DEFAULT_MAX_CURSOR_ENTRIES,
};

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
}
