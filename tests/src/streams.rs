//! Streaming responses read incrementally: [`SseStream`] (with [`SseBlock`] and
//! [`SseEvent`]), [`NdjsonStream`] and [`IframeStream`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Conn, Head, ReadError, TIMEOUT};

/// A blank-line-separated SSE block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines joined with LF.
    pub data: Option<String>,
    /// `retry:`.
    pub retry: Option<u64>,
    /// Comment lines (without the leading colon and space).
    pub comments: Vec<String>,
}

/// One SSE event with data.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `id:` (the connection's resume cursor).
    pub id: Option<String>,
    /// The data, parsed as JSON.
    pub data: Value,
}

/// A `text/event-stream` response read incrementally.
pub struct SseStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
}

impl SseStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut conn = Conn::connect(addr);
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        conn.send_request("GET", target, &all, b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        SseStream { conn, head }
    }

    /// The next block (event, comment or retry).
    pub fn next_block(&mut self, timeout: Duration) -> Result<SseBlock, ReadError> {
        let raw = self.conn.take_until(b"\n\n", timeout)?;
        let text = String::from_utf8(raw).map_err(|e| ReadError::Malformed(e.to_string()))?;
        let mut block = SseBlock::default();
        for line in text.trim_end_matches('\n').split('\n') {
            if let Some(c) = line.strip_prefix(':') {
                block.comments.push(c.trim_start().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => block.id = Some(value),
                "event" => block.event = Some(value),
                "retry" => block.retry = value.parse().ok(),
                "data" => {
                    block.data = Some(match block.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value,
                    })
                }
                other => return Err(ReadError::Malformed(format!("unknown field {other:?}"))),
            }
        }
        Ok(block)
    }

    /// The next event with data, skipping comments and `retry:` blocks.
    pub fn next_event(&mut self, timeout: Duration) -> Result<SseEvent, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let block = self.next_block(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(data) = block.data {
                let data = serde_json::from_str(&data)
                    .map_err(|e| ReadError::Malformed(format!("data {data:?}: {e}")))?;
                return Ok(SseEvent { id: block.id, data });
            }
        }
    }

    /// The next event; panics on anything else.
    pub fn expect_event(&mut self) -> SseEvent {
        self.next_event(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an SSE event: {e:?}"))
    }
}

/// A chunked `application/x-ndjson` response read incrementally.
pub struct NdjsonStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
    pending: Vec<u8>,
    lines: VecDeque<Value>,
    ended: bool,
}

impl NdjsonStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str) -> NdjsonStream {
        let mut conn = Conn::connect(addr);
        conn.send_request("GET", target, &[], b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        NdjsonStream {
            conn,
            head,
            pending: Vec::new(),
            lines: VecDeque::new(),
            ended: false,
        }
    }

    /// The next line as JSON; `Err(Closed)` after the last chunk.
    pub fn next(&mut self, timeout: Duration) -> Result<Value, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines.pop_front() {
                return Ok(v);
            }
            if self.ended {
                return Err(ReadError::Closed);
            }
            match self
                .conn
                .read_chunk(deadline.saturating_duration_since(Instant::now()))?
            {
                None => self.ended = true,
                Some(chunk) => {
                    self.pending.extend_from_slice(&chunk);
                    while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.pending.drain(..=i).collect();
                        let v = serde_json::from_slice(&line[..i]).map_err(|e| {
                            ReadError::Malformed(format!(
                                "line {:?}: {e}",
                                String::from_utf8_lossy(&line)
                            ))
                        })?;
                        self.lines.push_back(v);
                    }
                }
            }
        }
    }

    /// The next line; panics on anything else.
    pub fn expect(&mut self) -> Value {
        self.next(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an NDJSON line: {e:?}"))
    }

    /// True once the last chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// A chunked `text/html` iframe stream read incrementally.
pub struct IframeStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
    /// Chunks that were not scripts (the preamble).
    pub other: Vec<String>,
    ended: bool,
}

impl IframeStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str) -> IframeStream {
        let mut conn = Conn::connect(addr);
        conn.send_request("GET", target, &[], b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        IframeStream {
            conn,
            head,
            other: Vec::new(),
            ended: false,
        }
    }

    /// The next `<script>parent.CB(JSON);</script>` as `(CB, JSON)`; `Err(Closed)` after
    /// the last chunk.
    pub fn next(&mut self, timeout: Duration) -> Result<(String, Value), ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ended {
                return Err(ReadError::Closed);
            }
            let Some(chunk) = self
                .conn
                .read_chunk(deadline.saturating_duration_since(Instant::now()))?
            else {
                self.ended = true;
                continue;
            };
            let text = String::from_utf8(chunk).map_err(|e| ReadError::Malformed(e.to_string()))?;
            let Some(rest) = text.strip_prefix("<script>parent.") else {
                self.other.push(text);
                continue;
            };
            let bad = || ReadError::Malformed(format!("bad script chunk {text:?}"));
            let body = rest.strip_suffix(");</script>\n").ok_or_else(bad)?;
            let (cb, json) = body.split_once('(').ok_or_else(bad)?;
            let v = serde_json::from_str(json).map_err(|_| bad())?;
            return Ok((cb.to_string(), v));
        }
    }

    /// The next script's JSON; panics on anything else.
    pub fn expect(&mut self) -> (String, Value) {
        self.next(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an iframe script: {e:?}"))
    }
}
