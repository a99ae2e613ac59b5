//! Benchmarks live in benches/: `make bench` (or `cargo bench -p pushedge-bench`).
//!
//! - `benches/protocol.rs`: the protocol codecs (HTTP head parsing against raw httparse,
//!   the WebSocket handshake check, frame decoding, unmasking, the message wire forms).
