//! What each io_uring operation carries in its `user_data`: the operation's kind in the
//! tag byte of a [`Token`]-shaped value, and
//!
//! - for socket operations (poll, receive, shutdown): the socket and the connection's
//!   generation, so that a completion for a connection that is gone is recognised;
//! - for sends: the index of the send op;
//! - for accepts: the listener id;
//! - for the rest (cancels, closes, the waker): nothing.

use crate::reactor::{Sock, Token};

/// A listener's multishot accept.
pub const K_ACCEPT: u8 = 1;
/// The waker's multishot poll.
pub const K_WAKE: u8 = 2;
/// An idle socket's multishot poll.
pub const K_POLL: u8 = 3;
/// A one-shot receive.
pub const K_RECV: u8 = 4;
/// A multishot receive.
pub const K_RECVM: u8 = 5;
/// A send.
pub const K_SEND: u8 = 6;
/// Cancels, closes, rejects: completions nobody waits for.
pub const K_MISC: u8 = 7;
/// A peer-address lookup's descriptor install.
pub const K_INSTALL: u8 = 8;
/// A shutdown of the write side.
pub const K_SHUT: u8 = 9;

/// `user_data` of an operation of `kind` on `sock` for a connection at `generation`.
pub fn on_sock(kind: u8, generation: u32, sock: Sock) -> u64 {
    Token::new(sock as u32 as usize, generation).tagged(kind)
}

/// `user_data` of an operation of `kind` with a plain index (send op, listener).
pub fn indexed(kind: u8, index: usize) -> u64 {
    Token::new(index, 0).tagged(kind)
}

/// `user_data` of an operation nobody waits for.
pub fn misc() -> u64 {
    indexed(K_MISC, 0)
}

/// The kind.
pub fn kind(ud: u64) -> u8 {
    Token::tag_of(ud)
}

/// The generation of a socket operation.
pub fn generation(ud: u64) -> u32 {
    Token::from_raw(ud).generation()
}

/// The socket of a socket operation.
pub fn sock(ud: u64) -> Sock {
    Token::from_raw(ud).slot() as u32 as Sock
}

/// The index of an indexed operation.
pub fn index(ud: u64) -> usize {
    Token::from_raw(ud).slot()
}

/// A socket operation's value without its kind (the key of a shutdown in flight).
pub fn untagged(ud: u64) -> u64 {
    Token::from_raw(ud).raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back() {
        let ud = on_sock(K_RECV, 0xAB_CDEF, 4321);
        assert_eq!(
            (kind(ud), generation(ud), sock(ud)),
            (K_RECV, 0xAB_CDEF, 4321)
        );
        assert_eq!(index(indexed(K_SEND, 99)), 99);
        assert_eq!(kind(misc()), K_MISC);
        assert_eq!(untagged(ud), on_sock(0, 0xAB_CDEF, 4321));
    }
}
