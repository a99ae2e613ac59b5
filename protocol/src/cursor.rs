//! Stream positions and resume cursors.
//!
//! Every channel's message stream has an *epoch*: a short id the server picks when the
//! stream starts (a new channel, a channel created again after a close or a reclaim, a
//! server restarted without a disk store). Seq numbers count from 1 within an epoch and
//! never repeat in it, so a client's place in a stream is a seq *and* an epoch.
//!
//! A position is written `SEQ@EPOCH` (`12@k3x9ab2q`), or `SEQ` alone, the form of clients
//! that do not know the epoch (they keep working: the server then can only tell that a seq
//! beyond the stream's end cannot be from it). Epochs are 1 to [`MAX_EPOCH_LEN`] bytes of
//! `0-9 a-z`, so `@` never occurs in one and a position splits at its `@`.
//!
//! A resume cursor is the last delivered position of every channel of a connection,
//! `news:12@k3x9ab2q,chat:40@p0q1r2s3`: what pushedge puts in an SSE `id:` and what a
//! browser sends back in `Last-Event-ID`. A channel name may itself contain `:` and `@`,
//! so each entry is split at its last colon (a seq and an epoch contain neither).

use std::fmt;

use crate::http::push_decimal;
use crate::message::{validate_channel, ChannelError};

/// Longest epoch accepted in a position.
pub const MAX_EPOCH_LEN: usize = 16;
/// Most entries a cursor may carry by default (the engine passes its own limit).
pub const DEFAULT_MAX_CURSOR_ENTRIES: usize = 16;

/// A place in a channel's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    /// The seq.
    pub seq: u64,
    /// The stream's epoch, when the client knows it.
    pub epoch: Option<&'a str>,
}

/// Why a position cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionError {
    /// The seq is not a decimal number that fits in 64 bits.
    BadSeq,
    /// The epoch is empty, too long or has a byte outside `0-9 a-z`.
    BadEpoch,
}

impl fmt::Display for PositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PositionError::BadSeq => "the seq is not a non-negative integer",
            PositionError::BadEpoch => "the epoch must be 1-16 characters of 0-9 a-z",
        })
    }
}

impl std::error::Error for PositionError {}

/// True for an epoch of the accepted form.
pub fn is_valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// Parses `SEQ` or `SEQ@EPOCH`.
pub fn parse_position(s: &str) -> Result<Position<'_>, PositionError> {
    let (seq, epoch) = match s.split_once('@') {
        Some((seq, epoch)) => (seq, Some(epoch)),
        None => (s, None),
    };
    // u64::MAX has 20 digits; a 20-digit number over it fails in `parse` below.
    if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PositionError::BadSeq);
    }
    let seq = seq.parse().map_err(|_| PositionError::BadSeq)?;
    if let Some(e) = epoch {
        if !is_valid_epoch(e) {
            return Err(PositionError::BadEpoch);
        }
    }
    Ok(Position { seq, epoch })
}

/// Appends `SEQ@EPOCH`, or `SEQ` when `epoch` is empty.
pub fn write_position(out: &mut Vec<u8>, seq: u64, epoch: &str) {
    push_decimal(out, seq);
    if !epoch.is_empty() {
        out.push(b'@');
        out.extend_from_slice(epoch.as_bytes());
    }
}

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
    /// Entry `n` has an epoch of the wrong form.
    BadEpoch(usize),
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
            CursorError::BadEpoch(i) => write!(
                f,
                "cursor entry {i} has an invalid epoch (1-16 characters of 0-9 a-z)"
            ),
            CursorError::Duplicate(i) => write!(f, "cursor entry {i} repeats a channel"),
            CursorError::TooMany => write!(f, "too many channels in resume cursor"),
        }
    }
}

impl std::error::Error for CursorError {}

/// Parses a cursor such as `news:12@k3x9ab2q,chat:40` into `(channel, position)` pairs, in
/// order. Spaces around entries are ignored.
pub fn parse_cursor(s: &str, max_entries: usize) -> Result<Vec<(&str, Position<'_>)>, CursorError> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() {
        return Err(CursorError::Empty);
    }
    let mut out: Vec<(&str, Position<'_>)> = Vec::new();
    for (i, entry) in s.split(',').enumerate() {
        if i == max_entries {
            return Err(CursorError::TooMany);
        }
        let entry = entry.trim_matches([' ', '\t']);
        let (name, pos) = entry.rsplit_once(':').ok_or(CursorError::MissingSeq(i))?;
        validate_channel(name).map_err(|e| CursorError::BadChannel(i, e))?;
        let pos = parse_position(pos).map_err(|e| match e {
            PositionError::BadSeq => CursorError::BadSeq(i),
            PositionError::BadEpoch => CursorError::BadEpoch(i),
        })?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(CursorError::Duplicate(i));
        }
        out.push((name, pos));
    }
    Ok(out)
}

/// Appends a cursor (`news:12@k3x9ab2q,chat:40`) for `(channel, seq, epoch)` entries (an
/// empty epoch is left out).
pub fn write_cursor<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a str, u64, &'a str)>,
) {
    for (i, (name, seq, epoch)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        write_position(out, seq, epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64, epoch: Option<&str>) -> Position<'_> {
        Position { seq, epoch }
    }

    #[test]
    fn positions() {
        assert_eq!(parse_position("12"), Ok(pos(12, None)));
        assert_eq!(parse_position("0@a"), Ok(pos(0, Some("a"))));
        assert_eq!(parse_position("12@k3x9ab2q"), Ok(pos(12, Some("k3x9ab2q"))));
        for bad_seq in ["", "x", "-1", "@a", "1.5", "99999999999999999999"] {
            assert_eq!(
                parse_position(bad_seq),
                Err(PositionError::BadSeq),
                "{bad_seq}"
            );
        }
        for bad_epoch in [
            "1@",
            "1@A",
            "1@a-b",
            "1@a@b",
            &format!("1@{}", "a".repeat(17)),
        ] {
            assert_eq!(
                parse_position(bad_epoch),
                Err(PositionError::BadEpoch),
                "{bad_epoch}"
            );
        }
        let mut out = Vec::new();
        write_position(&mut out, 7, "e1");
        out.push(b' ');
        write_position(&mut out, 8, "");
        assert_eq!(out, b"7@e1 8");
    }

    #[test]
    fn parses_cursors() {
        assert_eq!(
            parse_cursor("news:12,chat:40", 16).unwrap(),
            vec![("news", pos(12, None)), ("chat", pos(40, None))]
        );
        assert_eq!(
            parse_cursor(" a:b:3@e0 , c:0 ", 16).unwrap(),
            vec![("a:b", pos(3, Some("e0"))), ("c", pos(0, None))]
        );
        assert_eq!(
            parse_cursor("x@y:5@z9", 16).unwrap(),
            vec![("x@y", pos(5, Some("z9")))],
            "a name may hold @: the position is after the last colon"
        );
        assert_eq!(parse_cursor("", 16), Err(CursorError::Empty));
        assert_eq!(parse_cursor("news", 16), Err(CursorError::MissingSeq(0)));
        assert_eq!(parse_cursor("news:1,", 16), Err(CursorError::MissingSeq(1)));
        assert_eq!(parse_cursor("news:x", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(parse_cursor("news:-1", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(parse_cursor("news:", 16), Err(CursorError::BadSeq(0)));
        assert_eq!(parse_cursor("news:1@", 16), Err(CursorError::BadEpoch(0)));
        assert_eq!(parse_cursor("a:1,b:2@X", 16), Err(CursorError::BadEpoch(1)));
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
        write_cursor(&mut out, [("news", 12, "e1"), ("a:b", 0, "")]);
        assert_eq!(out, b"news:12@e1,a:b:0");
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            parse_cursor(&s, 16).unwrap(),
            vec![("news", pos(12, Some("e1"))), ("a:b", pos(0, None))]
        );
    }

    #[test]
    fn cursor_round_trip_at_the_largest_seqs() {
        // Regression: seqs of 20 digits (>= 10^19) were written but refused on the way back.
        let mut out = Vec::new();
        write_cursor(
            &mut out,
            [("a", u64::MAX, ""), ("b", 10_000_000_000_000_000_000, "z")],
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, "a:18446744073709551615,b:10000000000000000000@z");
        assert_eq!(
            parse_cursor(&s, 16).unwrap(),
            vec![
                ("a", pos(u64::MAX, None)),
                ("b", pos(10_000_000_000_000_000_000, Some("z")))
            ]
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
