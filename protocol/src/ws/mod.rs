//! WebSocket (RFC 6455).
//!
//! - [`handshake`]: the server's checks of RFC 6455 section 4.2.1, the accept key, the
//!   101 response, and the client side used by the load generator.
//! - [`deflate`]: permessage-deflate (RFC 7692): the negotiation, per-message deflate
//!   and bounded inflate.
//! - [`frame`]: the incremental [`Decoder`] (server or client role) and the encoders.
//! - [`mask`]: masking and unmasking, a word at a time.
//! - [`close`]: close codes and close-frame payloads.
//! - [`utf8`]: incremental UTF-8 validation that fails on the first bad byte.
//! - [`session`]: the server side of a session: pong replies, the heartbeat ping, the
//!   close handshake.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use frame::{
    encode_close, encode_frame, encode_masked_frame, frame_len, write_frame_header, DataKind,
    Decoded, Decoder, DecoderConfig, Event, OpCode, Role, WsError,
};
pub use handshake::{accept_key, HandshakeError};
pub use session::{Control, Session};
