//! Pipelined publishing over one admin connection: [`publish_pipelined`], [`PubAnswer`].

use std::net::SocketAddr;

use serde_json::Value;

use crate::{Conn, TIMEOUT};

/// The answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAnswer {
    /// HTTP status; 0 when no answer came (the connection ended first).
    pub status: u16,
    /// The seq of a 200.
    pub seq: Option<u64>,
    /// The epoch of a 200.
    pub epoch: Option<String>,
    /// What was published.
    pub content: String,
}

/// Publishes over one admin connection with `depth` requests in flight: `next(i)` gives
/// the i-th content (`None` ends), `stop` ends early. Returns one answer per request sent,
/// in order; requests left unanswered when the connection ends get status 0.
pub fn publish_pipelined(
    admin: SocketAddr,
    channel: &str,
    depth: usize,
    stop: &std::sync::atomic::AtomicBool,
    mut next: impl FnMut(usize) -> Option<String>,
) -> Vec<PubAnswer> {
    let mut conn = Conn::connect(admin);
    let mut answers = Vec::new();
    let mut done = false;
    while !done && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut batch = Vec::with_capacity(depth);
        let mut out = Vec::new();
        for _ in 0..depth {
            let Some(c) = next(answers.len() + batch.len()) else {
                done = true;
                break;
            };
            out.extend_from_slice(
                format!(
                    "POST /pub?channel={channel} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    c.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(c.as_bytes());
            batch.push(c);
        }
        if batch.is_empty() {
            break;
        }
        let sent = conn.send(&out).is_ok();
        for content in batch {
            let r = if sent {
                conn.read_response(TIMEOUT * 2).ok()
            } else {
                None
            };
            let (status, seq, epoch) = match r {
                Some(r) => {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    (
                        r.status,
                        v["seq"].as_u64().filter(|_| r.status == 200),
                        v["epoch"].as_str().map(str::to_string),
                    )
                }
                None => {
                    done = true;
                    (0, None, None)
                }
            };
            answers.push(PubAnswer {
                status,
                seq,
                epoch,
                content,
            });
        }
    }
    answers
}
