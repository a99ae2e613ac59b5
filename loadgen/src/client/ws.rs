//! WebSocket: the handshake response (101 with the right `Sec-WebSocket-Accept`), then
//! frames decoded in the client role; pings are answered with masked pongs and a close
//! frame is echoed before the subscription ends. The messages are the format's
//! ([`frames`]) or Socket.IO's (`socketio`, through [`messages`]).

use protocol::http::Parsed;
use protocol::ws::handshake::{check_server_response, ClientHandshakeError};
use protocol::ws::{
    encode_close, encode_masked_frame, CloseCode, DataKind, Decoder, DecoderConfig,
    Event as WsEvent, OpCode, Role,
};

use super::envelope::deliver;
use super::{Client, Event, Failure, Format, Request, State, MAX_MESSAGE_BYTES};

impl Client {
    /// The handshake response so far is in `buf`; on the 101, frames follow in `next`.
    pub(super) fn ws_head(
        &mut self,
        key: [u8; 24],
        next: State,
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        let head_len = match check_server_response(&self.buf, &key) {
            Ok(Parsed::Partial) => return self.check_head_size(),
            Ok(Parsed::Complete(n)) => n,
            Err(ClientHandshakeError::Status(s)) => return Err(Failure::Status(s)),
            Err(ClientHandshakeError::Malformed) => {
                return Err(Failure::BadResponse("malformed handshake response"))
            }
            Err(ClientHandshakeError::BadAccept) => {
                return Err(Failure::BadResponse("wrong Sec-WebSocket-Accept"))
            }
        };
        self.after_head(next, head_len, req, out, sink)
    }
}

/// Decodes frames from `input`, answering pings and close frames; each message is one of
/// the format's.
pub(super) fn frames(
    decoder: &mut Decoder,
    format: Format,
    input: &mut [u8],
    out: &mut Vec<u8>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    messages(decoder, input, out, |_, data, _| {
        deliver(format, data, sink)
    })
}

/// Decodes frames from `input`, answering pings and close frames; each whole message goes
/// to `on_message` with the output buffer (for replies).
pub(super) fn messages(
    decoder: &mut Decoder,
    input: &mut [u8],
    out: &mut Vec<u8>,
    mut on_message: impl FnMut(DataKind, &[u8], &mut Vec<u8>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let cfg = DecoderConfig {
        role: Role::Client,
        max_message: MAX_MESSAGE_BYTES,
        skip_oversized: false,
    };
    let mut pos = 0;
    while pos < input.len() {
        let d = decoder
            .decode(&mut input[pos..], &cfg)
            .map_err(|e| Failure::Protocol(e.reason()))?;
        pos += d.consumed;
        match d.event {
            None => {}
            Some(WsEvent::Message { kind, data }) => on_message(kind, &data, out)?,
            Some(WsEvent::Ping(p)) => {
                encode_masked_frame(out, true, OpCode::Pong, &p, mask());
            }
            // (Only with skip_oversized, which a client does not ask for.)
            Some(WsEvent::Pong(_) | WsEvent::Skipped { .. }) => {}
            Some(WsEvent::Close(c)) => {
                let code = c.map_or(CloseCode::NO_STATUS, |c| c.code);
                let echo = if code == CloseCode::NO_STATUS {
                    CloseCode::NORMAL
                } else {
                    code
                };
                encode_close(out, echo, "", Some(mask()));
                return Err(Failure::WsClose(code.0));
            }
        }
    }
    Ok(())
}

/// A random masking key (client frames are masked).
pub(super) fn mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}
