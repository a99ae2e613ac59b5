//! The WebSocket opening handshake (RFC 6455 section 4).
//!
//! Server side: [`check_request`] applies the checks of section 4.2.1 to a parsed request
//! head and yields the `Sec-WebSocket-Accept` value; [`write_accept_response`] writes the
//! 101 response and [`write_reject_response`] the error answer (426 carries
//! `Sec-WebSocket-Version: 13`). Client side (for the load generator):
//! [`write_client_request`] and [`check_server_response`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::fmt;

use crate::http::{self, Method, Parsed, Request};

/// The GUID of RFC 6455 section 1.3, appended to the key before hashing.
pub const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The protocol version this implementation speaks.
pub const VERSION: &str = "13";

/// Why a request is not an acceptable WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not GET (405).
    Method,
    /// Not HTTP/1.1 or later (400).
    HttpVersion,
    /// No `Host` field (400).
    MissingHost,
    /// No `Upgrade: websocket` (400; a plain GET to a WebSocket path).
    NotUpgrade,
    /// `Connection` does not list `Upgrade` (400).
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64 (400).
    BadKey,
    /// `Sec-WebSocket-Version` missing (400).
    MissingVersion,
    /// `Sec-WebSocket-Version` other than 13 (426 with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// A short reason for the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Method => "WebSocket handshake must use GET",
            HandshakeError::HttpVersion => "WebSocket handshake needs HTTP/1.1",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::NotUpgrade => "expected Upgrade: websocket",
            HandshakeError::ConnectionNotUpgrade => "Connection header must include Upgrade",
            HandshakeError::BadKey => "missing or malformed Sec-WebSocket-Key",
            HandshakeError::MissingVersion => "missing Sec-WebSocket-Version",
            HandshakeError::UnsupportedVersion => "unsupported Sec-WebSocket-Version (use 13)",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HandshakeError {}

/// The `Sec-WebSocket-Accept` value for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes of digest always encode to exactly 28 base64 characters.
    let n = STANDARD
        .encode_slice(digest, &mut out)
        .expect("28 bytes hold the base64 of a SHA-1 digest");
    debug_assert_eq!(n, 28);
    out
}

/// Checks a request against RFC 6455 section 4.2.1 and returns the accept value.
pub fn check_request(req: &Request<'_, '_>) -> Result<[u8; 28], HandshakeError> {
    if req.method != Method::Get {
        return Err(HandshakeError::Method);
    }
    if req.version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if req.header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !req.has_token("upgrade", "websocket") {
        return Err(HandshakeError::NotUpgrade);
    }
    if !req.has_token("connection", "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    match req.header("sec-websocket-version") {
        None => return Err(HandshakeError::MissingVersion),
        Some(v) if http::tokens(v).any(|t| t == VERSION.as_bytes()) => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    Ok(accept_key(key))
}

/// True when `key` is base64 of exactly 16 bytes (24 characters ending in `==`).
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// Writes the 101 response that completes the handshake.
pub fn write_accept_response(out: &mut Vec<u8>, accept: &[u8; 28]) {
    write_accept_response_with(out, accept, b"");
}

/// Writes the 101 response with `extra` header lines (each ending in CRLF: a
/// `Sec-WebSocket-Extensions` answer, see [`super::deflate::write_response_header`]).
pub fn write_accept_response_with(out: &mut Vec<u8>, accept: &[u8; 28], extra: &[u8]) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// Writes the error response for a failed handshake (with `Sec-WebSocket-Version: 13` on
/// 426 and `Allow: GET` on 405); the connection should be closed after it.
pub fn write_reject_response(out: &mut Vec<u8>, err: HandshakeError) {
    let extra: &[(&str, &str)] = match err {
        HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", VERSION)],
        HandshakeError::Method => &[("Allow", "GET")],
        _ => &[],
    };
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
    headers.extend_from_slice(extra);
    let mut body = err.reason().as_bytes().to_vec();
    body.push(b'\n');
    http::write_response(out, err.status(), &headers, &body, false);
}

/// Writes a client handshake request for `target` on `host` with the given 16-byte nonce;
/// returns the key to check the answer with ([`check_server_response`]).
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    target: &str,
    nonce: [u8; 16],
) -> [u8; 24] {
    let mut key = [0u8; 24];
    STANDARD
        .encode_slice(nonce, &mut key)
        .expect("24 bytes hold the base64 of 16 bytes");
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(&key);
    out.extend_from_slice(b"\r\n\r\n");
    key
}

/// What a client learns from the server's answer to its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// The response head is not valid HTTP.
    Malformed,
    /// The server answered with this status instead of 101.
    Status(u16),
    /// 101, but `Sec-WebSocket-Accept` is missing or wrong.
    BadAccept,
}

/// Checks the server's response to a client handshake sent with `key`. On success returns
/// the length of the response head (frames may follow it in the same buffer).
pub fn check_server_response(
    buf: &[u8],
    key: &[u8; 24],
) -> Result<Parsed<usize>, ClientHandshakeError> {
    let mut headers = [http::EMPTY_HEADER; http::DEFAULT_MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(ClientHandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ClientHandshakeError::Status(code));
    }
    let expected = accept_key(key);
    match http::header(resp.headers, "sec-websocket-accept") {
        Some(v) if v == expected => Ok(Parsed::Complete(len)),
        _ => Err(ClientHandshakeError::BadAccept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Limits, EMPTY_HEADER};

    fn check(head: &[u8]) -> Result<[u8; 28], HandshakeError> {
        let mut headers = [EMPTY_HEADER; 32];
        match parse_request(head, &mut headers, &Limits::default()) {
            Ok(Parsed::Complete(req)) => check_request(&req),
            other => panic!("bad test head: {other:?}"),
        }
    }

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            &check(GOOD.as_bytes()).unwrap(),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_values_are_case_insensitive_token_lists() {
        let head = GOOD
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade");
        assert!(check(head.as_bytes()).is_ok());
    }

    #[test]
    fn each_check_has_its_status() {
        // Without Host, an HTTP/1.1 head is refused by the parser already (400).
        let no_host = GOOD.replace("Host: server.example.com\r\n", "");
        let mut headers = [EMPTY_HEADER; 32];
        let parsed = parse_request(no_host.as_bytes(), &mut headers, &Limits::default());
        assert_eq!(parsed.err().map(|e| e.status()), Some(400));
        assert_eq!(HandshakeError::MissingHost.status(), 400);
        let cases = [
            (GOOD.replace("GET", "POST"), HandshakeError::Method, 405),
            (
                GOOD.replace("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::HttpVersion,
                400,
            ),
            (
                GOOD.replace("Upgrade: websocket\r\n", ""),
                HandshakeError::NotUpgrade,
                400,
            ),
            (
                GOOD.replace("Connection: Upgrade", "Connection: keep-alive"),
                HandshakeError::ConnectionNotUpgrade,
                400,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                HandshakeError::BadKey,
                400,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"),
                HandshakeError::BadKey,
                400,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZSE="),
                HandshakeError::BadKey,
                400,
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::BadKey,
                400,
            ),
            (
                GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""),
                HandshakeError::MissingVersion,
                400,
            ),
            (
                GOOD.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
                HandshakeError::UnsupportedVersion,
                426,
            ),
        ];
        for (head, err, status) in cases {
            assert_eq!(check(head.as_bytes()), Err(err), "{head}");
            assert_eq!(err.status(), status);
        }
    }

    #[test]
    fn reject_426_names_the_supported_version() {
        let mut out = Vec::new();
        write_reject_response(&mut out, HandshakeError::UnsupportedVersion);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    }

    #[test]
    fn client_and_server_agree() {
        let mut req = Vec::new();
        let key = write_client_request(&mut req, "localhost:8100", "/ws?channel=a", [7; 16]);
        let accept = check(&req).unwrap();
        let mut resp = Vec::new();
        write_accept_response(&mut resp, &accept);
        let head_len = resp.len();
        resp.extend_from_slice(b"\x81\x00");
        assert_eq!(
            check_server_response(&resp, &key),
            Ok(Parsed::Complete(head_len))
        );
        assert_eq!(
            check_server_response(&resp[..10], &key),
            Ok(Parsed::Partial)
        );
        assert_eq!(
            check_server_response(b"HTTP/1.1 404 Not Found\r\n\r\n", &key),
            Err(ClientHandshakeError::Status(404))
        );
        let other = write_client_request(&mut Vec::new(), "h", "/", [8; 16]);
        assert_eq!(
            check_server_response(&resp, &other),
            Err(ClientHandshakeError::BadAccept)
        );
    }
}
