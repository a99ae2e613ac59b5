//! Benchmarks live in benches/: `make bench` (or `cargo bench -p pushedge-bench`).
//!
//! - `benches/protocol.rs`: the protocol codecs (HTTP head parsing against raw httparse,
//!   the WebSocket handshake check, frame decoding, unmasking, the message wire forms).
//! - `src/bin/floor/`: `make bench-floor`, pushedge's fan-out to 15,000 WebSocket
//!   subscribers against a bare sender that writes one ready frame to each of as many
//!   loopback sockets, both read by the same epoll reader.

/// What a current browser sends to open a WebSocket (14 fields, 530 bytes).
pub const UPGRADE: &[u8] = b"GET /ws?channel=news,chat&since=1200 HTTP/1.1\r\n\
Host: push.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://www.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4b1d9e0c2f7a; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";
