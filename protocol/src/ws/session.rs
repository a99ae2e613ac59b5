//! The server side of a WebSocket session, sans-IO: what to send in answer to the peer's
//! control frames (a pong for a ping, a close for a close), the heartbeat ping, and the
//! close handshake (our close frame at most once). It keeps one byte of state, which
//! also holds what permessage-deflate negotiated (off, or the server's window bits: see
//! [`Session::set_deflate`]); the caller writes the bytes it is handed and decides what a
//! finished handshake means for its connection.
//!
//! ```text
//!   open --ping()--> awaiting pong --pong--> open
//!   open --close()--> close sent (nothing more is read; the peer's close is not answered)
//!   open --peer close--> closed (our answer written: the peer's code echoed)
//! ```

use super::close::CloseCode;
use super::frame::{encode_close, encode_frame, write_frame_header, Event, OpCode};

/// A heartbeat ping with no payload.
pub const PING: &[u8] = &[0x89, 0x00];

const AWAIT_PONG: u8 = 1;
const CLOSE_SENT: u8 = 2;
const CLOSE_RECEIVED: u8 = 4;
/// Bits 4-6: permessage-deflate: 0 off, else the server's window bits minus 8 (9-15 are
/// 1-7).
const DEFLATE_SHIFT: u32 = 4;
const DEFLATE_MASK: u8 = 0x70;

/// A session's state (one byte).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session(u8);

/// What a control frame from the peer meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A ping: its pong was written.
    Pinged,
    /// A pong; `awaited` when it answers our heartbeat ping (the wait is over).
    Ponged {
        /// It answered our ping.
        awaited: bool,
    },
    /// The peer closed: our answer was written; nothing more is sent on the session.
    Closed,
    /// Not a control frame.
    Data,
}

impl Session {
    /// A new, open session.
    pub const fn new() -> Session {
        Session(0)
    }

    /// The session's byte (a hot handover carries it to the next process).
    pub const fn to_bits(self) -> u8 {
        self.0
    }

    /// A session from [`Session::to_bits`].
    pub const fn from_bits(bits: u8) -> Session {
        Session(bits)
    }

    /// Records what permessage-deflate negotiated: `Some(window bits)` (9-15), or `None`
    /// (not used).
    pub fn set_deflate(&mut self, window_bits: Option<u8>) {
        let class = window_bits.map_or(0, |b| {
            b.clamp(
                super::deflate::MIN_WINDOW_BITS,
                super::deflate::MAX_WINDOW_BITS,
            ) - 8
        });
        self.0 = (self.0 & !DEFLATE_MASK) | (class << DEFLATE_SHIFT);
    }

    /// The server window bits of a negotiated permessage-deflate (9-15), or `None`.
    pub fn deflate(self) -> Option<u8> {
        match (self.0 & DEFLATE_MASK) >> DEFLATE_SHIFT {
            0 => None,
            class => Some(class + 8),
        }
    }

    /// A heartbeat ping to send; a pong is awaited from now on.
    pub fn ping(&mut self) -> &'static [u8] {
        self.0 |= AWAIT_PONG;
        PING
    }

    /// A ping was sent and its pong has not come.
    pub fn awaiting_pong(self) -> bool {
        self.0 & AWAIT_PONG != 0
    }

    /// Our close frame was sent (by [`Session::close`] or in answer to the peer's).
    pub fn close_sent(self) -> bool {
        self.0 & CLOSE_SENT != 0
    }

    /// The peer's close frame came.
    pub fn close_received(self) -> bool {
        self.0 & CLOSE_RECEIVED != 0
    }

    /// Writes our close frame into `out`, once; false when it was sent before.
    pub fn close(&mut self, code: CloseCode, reason: &str, out: &mut Vec<u8>) -> bool {
        if self.close_sent() {
            return false;
        }
        encode_close(out, code, reason, None);
        self.0 |= CLOSE_SENT;
        true
    }

    /// Takes a frame event from the peer: for a control frame, writes its answer into
    /// `out` (a pong; for a close, a close echoing the peer's code, unless ours was sent)
    /// and says what it was.
    pub fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) -> Control {
        match ev {
            Event::Ping(payload) => {
                encode_frame(out, true, OpCode::Pong, payload);
                Control::Pinged
            }
            Event::Pong(_) => {
                let awaited = self.awaiting_pong();
                self.0 &= !AWAIT_PONG;
                Control::Ponged { awaited }
            }
            Event::Close(frame) => {
                self.0 |= CLOSE_RECEIVED;
                if !self.close_sent() {
                    let code = frame.as_ref().map_or(CloseCode::NORMAL, |f| f.code);
                    write_frame_header(out, true, OpCode::Close, 2, None);
                    out.extend_from_slice(&code.0.to_be_bytes());
                    self.0 |= CLOSE_SENT;
                }
                Control::Closed
            }
            Event::Message { .. } | Event::Skipped { .. } => Control::Data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::CloseFrame;
    use std::borrow::Cow;

    #[test]
    fn pings_are_answered_and_pongs_end_the_wait() {
        let mut s = Session::new();
        let mut out = Vec::new();
        assert_eq!(
            s.on_event(&Event::Ping(Cow::Borrowed(b"hi")), &mut out),
            Control::Pinged
        );
        assert_eq!(out, [0x8A, 0x02, b'h', b'i']);
        assert_eq!(s.ping(), PING);
        assert!(s.awaiting_pong());
        out.clear();
        let pong = Event::Pong(Cow::Borrowed(&b""[..]));
        assert_eq!(
            s.on_event(&pong, &mut out),
            Control::Ponged { awaited: true }
        );
        assert!(!s.awaiting_pong() && out.is_empty());
        assert_eq!(
            s.on_event(&pong, &mut out),
            Control::Ponged { awaited: false },
            "an unsolicited pong"
        );
    }

    #[test]
    fn deflate_rides_in_the_same_byte() {
        let mut s = Session::new();
        assert_eq!(s.deflate(), None);
        for bits in 9..=15 {
            s.set_deflate(Some(bits));
            assert_eq!(s.deflate(), Some(bits));
        }
        s.ping();
        let mut out = Vec::new();
        s.close(CloseCode::NORMAL, "", &mut out);
        assert_eq!(s.deflate(), Some(15));
        assert!(s.awaiting_pong() && s.close_sent());
        s.set_deflate(None);
        assert_eq!(s.deflate(), None);
        assert!(s.awaiting_pong() && s.close_sent());
        assert_eq!(std::mem::size_of::<Session>(), 1);
    }

    #[test]
    fn the_close_handshake_sends_one_close() {
        let mut s = Session::new();
        let mut out = Vec::new();
        let close = Event::Close(Some(CloseFrame {
            code: CloseCode::GOING_AWAY,
            reason: Cow::Borrowed(""),
        }));
        assert_eq!(s.on_event(&close, &mut out), Control::Closed);
        assert_eq!(out, [0x88, 0x02, 0x03, 0xE9], "the peer's code echoed");
        assert!(s.close_sent() && s.close_received());
        out.clear();
        assert!(!s.close(CloseCode::NORMAL, "", &mut out), "only once");
        assert!(out.is_empty());

        let mut s = Session::new();
        assert!(s.close(CloseCode::POLICY, "bye", &mut out));
        out.clear();
        assert_eq!(s.on_event(&Event::Close(None), &mut out), Control::Closed);
        assert!(
            out.is_empty(),
            "ours was sent: the peer's close ends the handshake"
        );
    }
}
