//! SSE and stream (chunked NDJSON): a 200 head, then a plain or chunked body read line by
//! line. SSE joins the `data:` lines of an event and skips comments (`: ping`), `id:`,
//! `event:` and `retry:`; stream delivers one message per non-blank line. The end of the
//! body ends the subscription.

use protocol::http::ChunkedDecoder;

use super::envelope::deliver;
use super::http::{dechunk, lines, parse_head};
use super::{Client, Event, Failure, Format, Request, State, MAX_MESSAGE_BYTES};

impl Client {
    /// The response head so far is in `buf`; on the 200, the body follows.
    pub(super) fn http_head(
        &mut self,
        sse: bool,
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        let (head_len, status, chunked, _) = match parse_head(&self.buf)? {
            Some(h) => h,
            None => return self.check_head_size(),
        };
        if status != 200 {
            return Err(Failure::Status(status));
        }
        let chunked = chunked.then(|| ChunkedDecoder::new(usize::MAX));
        let state = if sse {
            State::Sse {
                chunked,
                data: Vec::new(),
                has_data: false,
            }
        } else {
            State::Stream { chunked }
        };
        self.after_head(state, head_len, req, out, sink)
    }
}

/// SSE body bytes: complete lines go to [`sse_line`]; `pending` keeps the unfinished one.
pub(super) fn sse_body(
    pending: &mut Vec<u8>,
    chunked: &mut Option<ChunkedDecoder>,
    data: &mut Vec<u8>,
    has_data: &mut bool,
    format: Format,
    input: &[u8],
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let body = dechunk(chunked, input)?;
    lines(pending, &body, |line| {
        sse_line(line, data, has_data, format, sink)
    })?;
    if body.ended {
        return Err(Failure::Ended);
    }
    Ok(())
}

/// Stream body bytes: every complete non-blank line is a message.
pub(super) fn ndjson_body(
    pending: &mut Vec<u8>,
    chunked: &mut Option<ChunkedDecoder>,
    format: Format,
    input: &[u8],
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let body = dechunk(chunked, input)?;
    lines(pending, &body, |line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        deliver(format, line, sink)
    })?;
    if body.ended {
        return Err(Failure::Ended);
    }
    Ok(())
}

/// One SSE line: collects `data:` and dispatches the event on the blank line.
fn sse_line(
    line: &[u8],
    data: &mut Vec<u8>,
    has_data: &mut bool,
    format: Format,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    if line.is_empty() {
        if *has_data {
            *has_data = false;
            let event = std::mem::take(data);
            deliver(format, &event, sink)?;
        }
        return Ok(());
    }
    if line[0] == b':' {
        return Ok(());
    }
    let (field, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    if field == b"data" {
        if *has_data {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
        *has_data = true;
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(Failure::TooBig);
        }
    }
    Ok(())
}
