//! WebSocket clients: [`Ws`] (tungstenite, well-behaved, with [`WsEvent`]) and [`RawWs`]
//! (hand-made frames: [`Frame`], [`op`], [`encode_frame`]).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Conn, ReadError, Response, QUIET, TIMEOUT};

/// What a WebSocket read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text message, parsed as JSON.
    Json(Value),
    /// A text message that is not JSON.
    Other(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping from the server (tungstenite answers it).
    Ping,
    /// A close frame: code and reason (`None` when the frame had no code).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (or after it).
    Ended(String),
    /// Nothing arrived in time.
    Timeout,
}

/// A well-behaved WebSocket client (tungstenite over a std `TcpStream`).
pub struct Ws {
    /// The socket.
    pub ws: tungstenite::WebSocket<TcpStream>,
}

impl Ws {
    /// Connects and completes the handshake; panics on failure.
    pub fn connect(addr: SocketAddr, target: &str) -> Ws {
        Ws::try_connect(addr, target).unwrap_or_else(|e| panic!("WebSocket {target}: {e}"))
    }

    /// Connects; a non-101 answer is `Err(tungstenite::Error::Http(response))`.
    pub fn try_connect(addr: SocketAddr, target: &str) -> Result<Ws, tungstenite::Error> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let url = format!("ws://{addr}{target}");
        match tungstenite::client(url.as_str(), stream) {
            Ok((ws, _resp)) => Ok(Ws { ws }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
                io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
            )),
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(tungstenite::Message::text(text))
            .unwrap_or_else(|e| panic!("WebSocket send: {e}"));
    }

    /// Sends a JSON value as a text message.
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Sends an op (`sub`, `unsub`, `pub`) and reads its `ok` (which, for a `sub`, comes
    /// before what it replays); panics on anything else. Returns the `ok`.
    pub fn op_ok(&mut self, v: &Value) -> Value {
        self.send_json(v);
        let ok = self.recv_json();
        assert_eq!(ok["type"], "ok", "answer to {v}: {ok}");
        assert_eq!(ok["op"], v["op"], "answer to {v}: {ok}");
        assert_eq!(ok["channel"], v["channel"], "answer to {v}: {ok}");
        assert_eq!(ok.get("id"), v.get("id"), "answer to {v}: {ok}");
        ok
    }

    /// The next event (including pings), waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> WsEvent {
        use tungstenite::{Error, Message};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WsEvent::Timeout;
            }
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return match serde_json::from_str(t.as_str()) {
                        Ok(v) => WsEvent::Json(v),
                        Err(_) => WsEvent::Other(t.as_str().to_string()),
                    }
                }
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Ping(_)) => return WsEvent::Ping,
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    return WsEvent::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                    )
                }
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return WsEvent::Ended(e.to_string()),
            }
        }
    }

    /// The next JSON message, skipping pings; panics on anything else.
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_within(TIMEOUT)
    }

    /// The next JSON message within `timeout`, skipping pings; panics on anything else.
    pub fn recv_json_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Ping => continue,
                WsEvent::Json(v) => return v,
                other => panic!("expected a JSON message, got {other:?}"),
            }
        }
    }

    /// Skips messages and pings until a close frame or the end; `Some(code)` for a close
    /// frame with a code, panics when nothing ends the connection within `timeout`.
    pub fn recv_close(&mut self, timeout: Duration) -> Option<u16> {
        self.recv_close_frame(timeout).map(|(code, _)| code)
    }

    /// Like [`Ws::recv_close`], with the close reason.
    pub fn recv_close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Close(frame) => return frame,
                WsEvent::Ended(_) => return None,
                WsEvent::Timeout => panic!("the connection was not closed within {timeout:?}"),
                _ => continue,
            }
        }
    }

    /// Asserts that no data message arrives for `QUIET` (pings are fine).
    pub fn expect_quiet(&mut self) {
        let deadline = Instant::now() + QUIET;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Timeout => return,
                WsEvent::Ping => continue,
                other => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

/// A received raw WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV bits (shifted down: 0..=7).
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// Payload (unmasked).
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: the code and reason.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != 0x8 || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// A hand-driven WebSocket client: writes arbitrary frames, never answers pings.
pub struct RawWs {
    /// The connection (after the 101 head).
    pub conn: Conn,
}

/// Opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

impl RawWs {
    /// The handshake request for `target`, with a given version.
    pub fn handshake_request(target: &str, version: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    }

    /// Sends a handshake with extra header fields; the connection on 101, else the
    /// answer.
    pub fn try_connect_with(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawWs, Response> {
        let mut conn = Conn::connect(addr);
        let mut req = RawWs::handshake_request(target, "13");
        req.truncate(req.len() - 2);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.send(req.as_bytes()).expect("send handshake");
        let head = conn.read_head(TIMEOUT).expect("handshake answer");
        if head.status == 101 {
            return Ok(RawWs { conn });
        }
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = conn.take_exact(len, TIMEOUT).expect("the refusal's body");
        Err(Response {
            status: head.status,
            head,
            body,
        })
    }

    /// Connects and completes the handshake; panics unless the answer is 101 with the
    /// right `Sec-WebSocket-Accept`.
    pub fn connect(addr: SocketAddr, target: &str) -> RawWs {
        let mut conn = Conn::connect(addr);
        conn.send(RawWs::handshake_request(target, "13").as_bytes())
            .expect("send handshake");
        let head = conn.read_head(TIMEOUT).expect("handshake answer");
        assert_eq!(head.status, 101, "handshake for {target}: {head:?}");
        // The RFC 6455 section 1.3 example key and its accept value.
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head:?}"
        );
        RawWs { conn }
    }

    /// Writes one frame: `fin`, `rsv` (0..=7), `opcode`, masked with a fixed key when
    /// `masked`.
    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) {
        let bytes = encode_frame(
            fin,
            rsv,
            opcode,
            masked.then_some([0x37, 0xfa, 0x21, 0x3d]),
            payload,
        );
        self.conn.send(&bytes).expect("send frame");
    }

    /// Writes a masked, final text frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0, op::TEXT, true, text.as_bytes());
    }

    /// Reads one frame from the server.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let h = self.conn.take_exact(2, timeout)?;
        let fin = h[0] & 0x80 != 0;
        let rsv = (h[0] >> 4) & 0x7;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let b = self.conn.take_exact(2, left())?;
            len = u64::from(u16::from_be_bytes([b[0], b[1]]));
        } else if len == 127 {
            let b = self.conn.take_exact(8, left())?;
            len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
        }
        let mask = if masked {
            Some(self.conn.take_exact(4, left())?)
        } else {
            None
        };
        let len = usize::try_from(len).map_err(|_| ReadError::Malformed("huge frame".into()))?;
        let mut payload = self.conn.take_exact(len, left())?;
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok(Frame {
            fin,
            rsv,
            opcode,
            payload,
        })
    }

    /// The next data frame's payload as JSON, skipping pings.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self
                .read_frame(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("expected a frame: {e:?}"));
            match f.opcode {
                op::PING | op::PONG => continue,
                op::TEXT => {
                    return serde_json::from_slice(&f.payload).unwrap_or_else(|e| {
                        panic!("{e}: {:?}", String::from_utf8_lossy(&f.payload))
                    })
                }
                _ => panic!("expected a text frame, got {f:?}"),
            }
        }
    }

    /// Skips frames until a close frame (`Some((code, reason))`, or `Some((0, ""))` for a
    /// close frame without a code) or the end of the connection (`None`). Panics when
    /// neither happens within `timeout`.
    pub fn recv_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) if f.opcode == op::CLOSE => {
                    return Some(f.close_code().unwrap_or((0, String::new())))
                }
                Ok(_) => continue,
                Err(ReadError::Closed) => return None,
                Err(ReadError::Timeout) => {
                    panic!("the connection was not closed within {timeout:?}")
                }
                Err(e) => panic!("reading frames: {e:?}"),
            }
        }
    }
}

/// Encodes a frame (for [`RawWs`] and for tests that build byte strings).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(u8::from(fin) << 7 | (rsv & 0x7) << 4 | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
