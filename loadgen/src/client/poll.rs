//! Long-poll: `GET ...` without `seq` is answered `[{"type":"next_seq",...}]` (the
//! subscription is then up); then `GET ...&seq=N` on the same keep-alive connection, again
//! and again, each answer a JSON array (plain or chunked body); `N` advances past every
//! message received. `Connection: close` on an answer ends the subscription.

use protocol::http::ChunkedDecoder;

use super::envelope::{envelope, Envelope};
use super::http::{content_length, parse_head, write_get};
use super::{Client, Event, Failure, Request, State, MAX_MESSAGE_BYTES};

/// Where the current long-poll answer stands.
#[derive(Debug)]
pub(super) enum PollPhase {
    /// Waiting for the answer's head.
    Head,
    /// Reading its body; `close_after`: the server said `Connection: close`.
    Body {
        framing: PollBody,
        close_after: bool,
    },
}

/// How an answer's body is framed.
#[derive(Debug)]
pub(super) enum PollBody {
    /// `Content-Length` bytes.
    Length(usize),
    /// Chunked, decoded into the body so far.
    Chunked(ChunkedDecoder, Vec<u8>),
}

impl Client {
    /// Handles every complete long-poll response in `buf`.
    pub(super) fn poll_progress(
        &mut self,
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        loop {
            let State::Poll { seq, phase } = &mut self.state else {
                unreachable!("poll_progress runs in the poll state");
            };
            match phase {
                PollPhase::Head => {
                    let Some((head_len, status, chunked, close)) = parse_head(&self.buf)? else {
                        return self.check_head_size();
                    };
                    if status != 200 {
                        return Err(Failure::Status(status));
                    }
                    let framing = if chunked {
                        PollBody::Chunked(ChunkedDecoder::new(MAX_MESSAGE_BYTES), Vec::new())
                    } else {
                        let len = content_length(&self.buf[..head_len])?;
                        if len > MAX_MESSAGE_BYTES {
                            return Err(Failure::TooBig);
                        }
                        PollBody::Length(len)
                    };
                    self.buf.drain(..head_len);
                    *phase = PollPhase::Body {
                        framing,
                        close_after: close,
                    };
                }
                PollPhase::Body {
                    framing,
                    close_after,
                } => {
                    let body: Vec<u8> = match framing {
                        PollBody::Length(n) => {
                            if self.buf.len() < *n {
                                return Ok(());
                            }
                            let rest = self.buf.split_off(*n);
                            std::mem::replace(&mut self.buf, rest)
                        }
                        PollBody::Chunked(dec, body) => {
                            let (used, done) = dec
                                .decode(&self.buf, body)
                                .map_err(|_| Failure::BadResponse("bad chunked body"))?;
                            self.buf.drain(..used);
                            if !done {
                                return Ok(());
                            }
                            std::mem::take(body)
                        }
                    };
                    let close_after = *close_after;
                    let was_established = seq.is_some();
                    poll_items(&body, seq, sink)?;
                    let Some(next) = *seq else {
                        return Err(Failure::BadResponse("long-poll answer without next_seq"));
                    };
                    if !was_established {
                        sink(Event::Established);
                    }
                    if close_after {
                        return Err(Failure::Ended);
                    }
                    write_get(out, req, "application/json", Some(next));
                    *phase = PollPhase::Head;
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The items of one long-poll answer; advances `seq`.
fn poll_items(
    body: &[u8],
    seq: &mut Option<u64>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let items: Vec<Envelope<'_>> = serde_json::from_slice(body)
        .map_err(|_| Failure::BadResponse("long-poll answer is not a JSON array of messages"))?;
    for env in &items {
        match env.ty.as_ref() {
            "next_seq" => {
                if let Some(s) = env.seq {
                    *seq = Some(s);
                }
            }
            "data" => {
                if let Some(s) = env.seq {
                    *seq = Some(seq.map_or(s + 1, |cur| cur.max(s + 1)));
                }
            }
            "gap" => {
                if let Some(to) = env.to {
                    *seq = Some(seq.map_or(to + 1, |cur| cur.max(to + 1)));
                }
            }
            "noop" if seq.is_none() => *seq = env.seq,
            _ => {}
        }
        envelope(env, sink)?;
    }
    Ok(())
}
