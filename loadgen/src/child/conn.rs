//! The state of one connection: the logical connection that lives across reconnects
//! ([`Logical`]), the socket in use ([`Conn`]) with its output buffer, why a socket is
//! closed ([`Close`]), and the mio tokens that name a socket (slab slot and generation).

use mio::net::TcpStream;
use mio::Token;
use std::io::{self, Write};
use std::time::Instant;

use crate::account::SeqTracker;
use crate::client::Client;
use crate::tls::TlsConn;

/// Where a logical connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting to be opened (first time, or after churn / a backoff).
    Waiting,
    /// A socket is connecting or handshaking.
    Connecting,
    /// Subscribed.
    Open,
    /// The attempt failed and will not be retried.
    Failed,
    /// The server dropped it and it will not be reopened.
    Dropped,
}

/// One of the child's `count` connections, across reconnects.
#[derive(Debug)]
pub(super) struct Logical {
    pub(super) stage: Stage,
    /// Has its first attempt been resolved?
    pub(super) tried: bool,
    /// Was it ever established?
    pub(super) ever_open: bool,
    /// Down after a server drop (storm), until established again.
    pub(super) down: bool,
    /// Consecutive failures since the last success (for the backoff).
    pub(super) failures: u32,
    /// The messages this subscriber received.
    pub(super) tracker: SeqTracker,
    /// `seq - i` of the first data message (pushedge): later ones must agree.
    pub(super) seq_offset: Option<i64>,
}

impl Logical {
    /// A connection not yet tried.
    pub(super) fn new() -> Self {
        Logical {
            stage: Stage::Waiting,
            tried: false,
            ever_open: false,
            down: false,
            failures: 0,
            tracker: SeqTracker::new(),
            seq_offset: None,
        }
    }
}

/// A socket in use.
pub(super) struct Conn {
    /// Distinguishes this socket from earlier users of its slab slot.
    pub(super) generation: u32,
    /// Index of its logical connection.
    pub(super) logical: u32,
    pub(super) sock: TcpStream,
    /// When the connect began (for the connect latency).
    pub(super) started: Instant,
    /// The TCP connect has completed.
    pub(super) connected: bool,
    /// The transport's protocol state.
    pub(super) client: Client,
    /// Output not yet written (request, pongs, poll requests); with TLS, plaintext not
    /// yet taken by rustls.
    pub(super) wbuf: Vec<u8>,
    /// TLS under the transport.
    pub(super) tls: Option<Box<TlsConn>>,
}

/// Why a socket is being closed.
pub(super) enum Close {
    /// The attempt failed before the subscription was up.
    Failed(String),
    /// The server (or the network) ended an established subscription.
    Dropped(String),
    /// Closed on purpose (storm churn).
    Churn,
    /// Closed once subscribed (handshake mode).
    Cycle,
}

/// Writes queued output until done or `WouldBlock` (with TLS: encrypted, and the TLS
/// records rustls has to send, handshake included).
pub(super) fn flush(conn: &mut Conn) -> io::Result<()> {
    if let Some(tls) = conn.tls.as_mut() {
        tls.write_to(&mut conn.wbuf, &mut conn.sock)?;
        if conn.wbuf.is_empty() && conn.wbuf.capacity() > 4096 {
            conn.wbuf = Vec::new();
        }
        return Ok(());
    }
    let mut off = 0;
    while off < conn.wbuf.len() {
        match conn.sock.write(&conn.wbuf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.drain(..off);
    if conn.wbuf.is_empty() && conn.wbuf.capacity() > 4096 {
        conn.wbuf = Vec::new();
    }
    Ok(())
}

/// Slot in the low 32 bits, generation in the high 32.
pub(super) fn token_of(slot: usize, generation: u32) -> Token {
    Token((u64::from(generation) << 32 | slot as u64) as usize)
}

/// The slot and generation of a token made by [`token_of`].
pub(super) fn split_token(t: Token) -> (usize, u32) {
    (
        (t.0 as u64 & 0xFFFF_FFFF) as usize,
        (t.0 as u64 >> 32) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{SIGNAL, STDIN};

    #[test]
    fn tokens_carry_slot_and_generation() {
        for (slot, generation) in [(0, 0), (5, 1), (19_999, u32::MAX - 2)] {
            let t = token_of(slot, generation);
            assert_ne!(t, STDIN);
            assert_ne!(t, SIGNAL);
            assert_eq!(split_token(t), (slot, generation));
        }
    }
}
