//! Sans-IO codecs for pushedge.
//!
//! This crate turns bytes into requests, frames and events and back. It contains no
//! networking code, starts no threads, never reads a clock and never logs: the engine feeds
//! bytes in and takes bytes out, and every output goes into a buffer the caller owns.
//!
//! - [`http`]: HTTP/1.1 request heads (on `httparse`) with limits, request bodies
//!   (`Content-Length` and chunked, with the smuggling checks), response heads and the
//!   chunked-body encoder.
//! - [`query`]: request targets, query strings and percent-decoding.
//! - [`ws`]: RFC 6455 — the opening handshake, the incremental frame decoder, the frame
//!   encoders, masking, close codes and incremental UTF-8 validation.
//! - [`cursor`]: stream positions (`12@k3x9ab2q`: seq and epoch) and resume cursors
//!   (`news:12@k3x9ab2q,chat:40`).
//! - [`sse`]: Server-Sent Events encoding.
//! - [`message`]: the JSON message envelope and its wire forms (WebSocket frame, SSE event,
//!   NDJSON chunk, iframe script chunk, JSONP).
//! - [`engineio`]: Engine.IO v4 — packet types, WebSocket text packets, polling payloads
//!   (`0x1e`-separated, `b` + base64 for binary), the open packet and the HTTP error body.
//! - [`socketio`]: Socket.IO v5 — packets (`<type>[<n>-][<nsp>,][<id>][<json>]`) with their
//!   shape checks, event data, and binary attachments between placeholders and inline
//!   `{"$binary":"..."}` objects.
//! - [`proxy`]: the PROXY protocol header (v1 text, v2 binary) a load balancer puts at the
//!   start of a connection.
//!
//! Short input is never an error: parsers answer "partial" and consume nothing they cannot
//! use. Every limit is checked before anything is allocated for it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cursor;
pub mod engineio;
pub mod http;
pub mod message;
pub mod proxy;
pub mod query;
pub mod socketio;
pub mod sse;
pub mod ws;
