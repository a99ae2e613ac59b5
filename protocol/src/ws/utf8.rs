//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! [`Utf8Validator::feed`] fails as soon as a byte makes the text invalid, even in the middle
//! of a frame (RFC 6455 section 8.1 lets an endpoint fail fast, and Autobahn's strict mode
//! expects it). Between pieces it keeps at most three bytes of an unfinished code point.

/// The text is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validates a byte stream piece by piece.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes of an unfinished code point kept between pieces (a hot handover carries
    /// them to the next process).
    pub fn pending(&self) -> &[u8] {
        &self.pending[..self.pending_len as usize]
    }

    /// A validator holding `pending` (at most 3 bytes, from [`Utf8Validator::pending`]).
    pub fn with_pending(pending: &[u8]) -> Option<Self> {
        if pending.len() > 3 {
            return None;
        }
        let mut v = Self::default();
        v.pending[..pending.len()].copy_from_slice(pending);
        v.pending_len = pending.len() as u8;
        Some(v)
    }

    /// Validates the next piece. Fails on the first byte that cannot be part of valid text.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Utf8Error> {
        while self.pending_len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            data = rest;
            self.pending[self.pending_len as usize] = b;
            self.pending_len += 1;
            match std::str::from_utf8(&self.pending[..self.pending_len as usize]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(Utf8Error),
                // Still a valid prefix of a code point; a code point has at most 4 bytes,
                // and from_utf8 reports an error_len before a 5th could be needed.
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// True when the text so far ends on a code-point boundary.
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Checks the end of the text: an unfinished code point is an error.
    pub fn finish(&self) -> Result<(), Utf8Error> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_in_pieces(data: &[u8], split: usize) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for piece in data.chunks(split.max(1)) {
            v.feed(piece)?;
        }
        v.finish()
    }

    #[test]
    fn agrees_with_std_for_any_split() {
        let samples: &[&[u8]] = &[
            b"hello",
            "κόσμε".as_bytes(),
            "\u{10FFFF}\u{7FF}\u{800}\u{FFFF}".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xed\xa0\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\xce",
            b"\xff",
            b"",
        ];
        for s in samples {
            let expected = std::str::from_utf8(s).is_ok();
            for split in 1..=s.len().max(1) {
                assert_eq!(
                    valid_in_pieces(s, split).is_ok(),
                    expected,
                    "{s:?} split {split}"
                );
            }
        }
    }

    #[test]
    fn fails_on_the_first_bad_byte() {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        v.feed(b"\xed").unwrap();
        // 0xED 0xA0 starts a surrogate: invalid as soon as the second byte arrives.
        assert_eq!(v.feed(b"\xa0"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok\xf4\x90"), Err(Utf8Error));
    }

    #[test]
    fn incomplete_end_is_an_error() {
        let mut v = Utf8Validator::new();
        v.feed(b"a\xe2\x82").unwrap();
        assert!(!v.is_complete());
        assert_eq!(v.finish(), Err(Utf8Error));
        v.feed(b"\xac").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }
}
