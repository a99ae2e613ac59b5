//! HTTP/1.1 plumbing shared by the HTTP transports: the `GET` request, response heads,
//! `Content-Length`, chunked bodies, and splitting a body into lines across reads.

use std::borrow::Cow;

use protocol::http::{self, ChunkedDecoder};

use super::{Failure, Request, MAX_MESSAGE_BYTES};

/// Header fields parsed in a response head.
const MAX_HEADERS: usize = 32;

/// Writes `GET target` (with `seq=N` appended when given).
pub(super) fn write_get(out: &mut Vec<u8>, req: Request<'_>, accept: &str, seq: Option<u64>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.target.as_bytes());
    if let Some(n) = seq {
        out.push(if req.target.contains('?') { b'&' } else { b'?' });
        out.extend_from_slice(b"seq=");
        http::push_decimal(out, n);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(req.host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-cache\r\n\r\n");
}

/// Parses a response head: `(head length, status, chunked, connection close)`, or `None`
/// when incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, bool, bool)>, Failure> {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            let chunked = http::has_token(resp.headers, "transfer-encoding", "chunked");
            let close =
                http::has_token(resp.headers, "connection", "close") || resp.version == Some(0);
            Ok(Some((n, status, chunked, close)))
        }
        Err(_) => Err(Failure::BadResponse("malformed response head")),
    }
}

/// The `Content-Length` of a complete head (0 when absent).
pub(super) fn content_length(head: &[u8]) -> Result<usize, Failure> {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head)
        .map_err(|_| Failure::BadResponse("malformed response head"))?;
    match http::header(resp.headers, "content-length") {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Failure::BadResponse("bad Content-Length")),
    }
}

/// Body bytes after removing the chunked framing, and whether the body ended.
pub(super) struct Body<'a> {
    bytes: Cow<'a, [u8]>,
    /// The last chunk was seen.
    pub(super) ended: bool,
}

impl std::ops::Deref for Body<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

pub(super) fn dechunk<'a>(
    chunked: &mut Option<ChunkedDecoder>,
    input: &'a [u8],
) -> Result<Body<'a>, Failure> {
    match chunked {
        None => Ok(Body {
            bytes: Cow::Borrowed(input),
            ended: false,
        }),
        Some(dec) => {
            let mut out = Vec::with_capacity(input.len());
            let (_, done) = dec
                .decode(input, &mut out)
                .map_err(|_| Failure::BadResponse("bad chunked body"))?;
            Ok(Body {
                bytes: Cow::Owned(out),
                ended: done,
            })
        }
    }
}

/// Calls `f` for every complete line (without CR LF) of `pending` + `data`; keeps the
/// unfinished rest in `pending`. Lines are taken from `data` in place when nothing is
/// pending.
pub(super) fn lines(
    pending: &mut Vec<u8>,
    data: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut each = |mut s: &[u8]| -> Result<usize, Failure> {
        let mut used = 0;
        while let Some(nl) = s.iter().position(|&b| b == b'\n') {
            let line = &s[..nl];
            f(line.strip_suffix(b"\r").unwrap_or(line))?;
            used += nl + 1;
            s = &s[nl + 1..];
        }
        Ok(used)
    };
    if pending.is_empty() {
        let used = each(data)?;
        pending.extend_from_slice(&data[used..]);
    } else {
        pending.extend_from_slice(data);
        let used = each(pending)?;
        pending.drain(..used);
        if pending.is_empty() {
            *pending = Vec::new();
        }
    }
    if pending.len() > MAX_MESSAGE_BYTES {
        return Err(Failure::TooBig);
    }
    Ok(())
}
