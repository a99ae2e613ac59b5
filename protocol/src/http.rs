//! HTTP/1.1: request heads, request bodies, response heads and chunked encoding.
//!
//! [`parse_request`] wraps `httparse` with the limits a server needs (head bytes, header
//! count) and maps every failure to the status the server must answer with
//! ([`HttpError::status`]); it also takes an absolute-form target as its origin form and
//! refuses an HTTP/1.1 head without exactly one valid `Host` (RFC 9112 3.2). [`body_framing`]
//! decides how a request body is delimited and
//! rejects the framings that invite request smuggling; [`ChunkedDecoder`] decodes a chunked
//! body incrementally under a size limit. [`write_response_head`] and the chunk helpers
//! produce responses.

use std::fmt;

pub use httparse::{Header, EMPTY_HEADER};

/// Default limit on the bytes of a request head (request line, headers, final CRLF).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;
/// Default limit on the number of header fields in a request head.
pub const DEFAULT_MAX_HEADERS: usize = 32;
/// Default limit on a decoded request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest chunk-size line (size, extensions, CRLF) the chunked decoder accepts.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Most bytes of trailer fields the chunked decoder skips before failing.
pub const MAX_TRAILER_BYTES: usize = 4096;

/// Limits applied while parsing a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes a request head may take, final CRLF included.
    pub max_head_bytes: usize,
    /// Most header fields a request head may carry.
    pub max_headers: usize,
    /// Most bytes a (decoded) request body may hold.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Result of feeding bytes to a parser: either done, or more input is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The input held a complete item.
    Complete(T),
    /// The input is a valid prefix; feed more bytes.
    Partial,
}

impl<T> Parsed<T> {
    /// True when more input is needed.
    pub fn is_partial(&self) -> bool {
        matches!(self, Parsed::Partial)
    }

    /// The parsed item, if complete.
    pub fn complete(self) -> Option<T> {
        match self {
            Parsed::Complete(t) => Some(t),
            Parsed::Partial => None,
        }
    }
}

/// Why a request cannot be served. Each maps to the status a server must send and then,
/// because the stream can no longer be trusted, close the connection after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request is malformed (400). The text says what was wrong.
    Malformed(&'static str),
    /// The head is larger than the limit (431).
    HeadTooLarge,
    /// The head has more header fields than the limit (431).
    TooManyHeaders,
    /// The HTTP version is not 1.x (505).
    Version,
    /// The method is not one this server knows (501).
    MethodNotImplemented,
    /// A transfer coding other than chunked (501).
    CodingNotImplemented,
    /// The body framing is ambiguous or invalid, the kind of request smuggling needs (400).
    BadFraming(&'static str),
    /// The body is larger than the limit (413).
    BodyTooLarge,
}

impl HttpError {
    /// The status code the server must answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadFraming(_) => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Version => 505,
            HttpError::MethodNotImplemented | HttpError::CodingNotImplemented => 501,
            HttpError::BodyTooLarge => 413,
        }
    }

    /// A short human-readable reason, suitable for the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::Malformed(why) | HttpError::BadFraming(why) => why,
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::Version => "HTTP version not supported",
            HttpError::MethodNotImplemented => "method not implemented",
            HttpError::CodingNotImplemented => "transfer coding not implemented",
            HttpError::BodyTooLarge => "request body too large",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}

/// Request methods. Methods outside this list are answered with 501; a known method a
/// resource does not allow is the router's 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// PATCH
    Patch,
    /// CONNECT
    Connect,
    /// TRACE
    Trace,
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 9110 says).
    pub fn from_token(token: &str) -> Option<Method> {
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "CONNECT" => Method::Connect,
            "TRACE" => Method::Trace,
            _ => return None,
        })
    }

    /// The method's token.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
        }
    }
}

/// A parsed request head. It borrows the input buffer and the caller's header array.
#[derive(Debug)]
pub struct Request<'b, 'h> {
    /// The method.
    pub method: Method,
    /// The request target as sent (`/ws?channel=news`).
    pub target: &'b str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header fields, in order.
    pub headers: &'h [Header<'b>],
    /// Bytes the head took, final CRLF included; the body (if any) starts here.
    pub head_len: usize,
}

impl<'b> Request<'b, '_> {
    /// The first value of a header field, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header(self.headers, name)
    }

    /// The first value of a header field as text, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'b str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// True when any field `name` lists `token` (case-insensitive, comma-separated list).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        has_token(self.headers, name, token)
    }

    /// Whether the connection stays open after the response (HTTP/1.1 default yes unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        if self.version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &'b str {
        crate::query::split_target(self.target).0
    }

    /// The query part of the target (after `?`), empty when absent.
    pub fn query(&self) -> &'b str {
        crate::query::split_target(self.target).1.unwrap_or("")
    }
}

/// Parses a request head from the start of `buf`.
///
/// `headers` is the caller's array; its length should be `limits.max_headers` (a longer
/// array is cut to the limit). Returns `Partial` while `buf` is a valid prefix shorter than
/// the head limit.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    limits: &Limits,
) -> Result<Parsed<Request<'b, 'h>>, HttpError> {
    let max_headers = limits.max_headers.min(headers.len());
    let headers = &mut headers[..max_headers];
    let mut req = httparse::Request::new(headers);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(e) => return Err(map_parse_error(e, buf)),
    };
    match status {
        httparse::Status::Partial => {
            if buf.len() > limits.max_head_bytes {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            }
        }
        httparse::Status::Complete(head_len) => {
            if head_len > limits.max_head_bytes {
                return Err(HttpError::HeadTooLarge);
            }
            // httparse fills these in whenever it returns Complete.
            let method_token = req.method.unwrap_or("");
            let method = Method::from_token(method_token).ok_or(HttpError::MethodNotImplemented)?;
            let target = req.path.unwrap_or("");
            let version = req.version.unwrap_or(1);
            if target.is_empty() {
                return Err(HttpError::Malformed("empty request target"));
            }
            let target = origin_form(target)?;
            check_host(req.headers, version)?;
            Ok(Parsed::Complete(Request {
                method,
                target,
                version,
                headers: req.headers,
                head_len,
            }))
        }
    }
}

/// The origin form (`/path?query`) of a request target: an absolute-form target
/// (`http://host:port/path?query`, RFC 9112 3.2.2), which a server must accept, is taken
/// as its path and query (an empty path is `/`).
fn origin_form(target: &str) -> Result<&str, HttpError> {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some("http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some("https://") {
        &target[8..]
    } else {
        return Ok(target);
    };
    match rest.find(['/', '?']) {
        None => Ok("/"),
        Some(i) if rest.as_bytes()[i] == b'/' => Ok(&rest[i..]),
        Some(_) => Err(HttpError::Malformed("absolute-form target without a path")),
    }
}

/// An HTTP/1.1 request carries exactly one `Host`, a host and an optional port (RFC 9112
/// 3.2: anything else is 400); HTTP/1.0 may leave it out.
fn check_host(headers: &[Header<'_>], version: u8) -> Result<(), HttpError> {
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HttpError::Malformed("more than one Host header"));
    }
    match first {
        None if version >= 1 => Err(HttpError::Malformed("HTTP/1.1 request without Host")),
        None => Ok(()),
        Some(h) => {
            let ok = h
                .value
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]!$&'()*+,;=%".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(HttpError::Malformed("invalid Host header"))
            }
        }
    }
}

fn map_parse_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            // httparse reports a version error for anything that is not "HTTP/1.x"; a
            // well-formed "HTTP/2.0" or "HTTP/0.9" deserves 505, garbage deserves 400.
            if looks_like_other_version(buf) {
                HttpError::Version
            } else {
                HttpError::Malformed("malformed request line")
            }
        }
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Status => HttpError::Malformed("invalid status"),
        httparse::Error::Token => HttpError::Malformed("invalid token in request line"),
    }
}

/// True when the request line ends in `HTTP/d.d` with a version other than 1.x.
fn looks_like_other_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = match line_end {
        Some(end) => &buf[..end],
        None => return false,
    };
    let version = match line.rsplit(|&b| b == b' ').next() {
        Some(v) => v,
        None => return false,
    };
    version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit()
        && version[5] != b'1'
}

/// The first value of header field `name` (case-insensitive).
pub fn header<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// True when any field called `name` lists `token` in its comma-separated value.
pub fn has_token(headers: &[Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
}

/// The elements of a comma-separated header list, trimmed of spaces and tabs; empty
/// elements are skipped (RFC 9110 section 5.6.1).
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// A chunked body follows; decode it with [`ChunkedDecoder`].
    Chunked,
}

/// Decides how the body of `req` is framed, rejecting what invites request smuggling:
/// two different `Content-Length` values, `Content-Length` together with
/// `Transfer-Encoding`, a final coding other than `chunked`, `chunked` twice, or any
/// `Transfer-Encoding` on HTTP/1.0. A length over `limits.max_body_bytes` is 413.
pub fn body_framing(req: &Request<'_, '_>, limits: &Limits) -> Result<BodyFraming, HttpError> {
    let mut length: Option<u64> = None;
    let mut saw_te = false;
    let mut codings = 0usize;
    let mut last_chunked = false;
    let mut chunked_seen = false;
    for h in req.headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            for item in h.value.split(|&b| b == b',') {
                let n = parse_content_length(trim_ows(item))?;
                match length {
                    Some(prev) if prev != n => {
                        return Err(HttpError::BadFraming("conflicting Content-Length values"))
                    }
                    _ => length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            saw_te = true;
            for coding in tokens(h.value) {
                codings += 1;
                let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                if is_chunked && chunked_seen {
                    return Err(HttpError::BadFraming("chunked applied more than once"));
                }
                chunked_seen |= is_chunked;
                last_chunked = is_chunked;
            }
        }
    }
    if saw_te {
        if length.is_some() {
            return Err(HttpError::BadFraming(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if req.version == 0 {
            return Err(HttpError::BadFraming("Transfer-Encoding on HTTP/1.0"));
        }
        if !last_chunked {
            return Err(HttpError::BadFraming(
                "final transfer coding is not chunked",
            ));
        }
        if codings > 1 {
            return Err(HttpError::CodingNotImplemented);
        }
        return Ok(BodyFraming::Chunked);
    }
    match length {
        None | Some(0) => Ok(BodyFraming::None),
        Some(n) if n > limits.max_body_bytes as u64 => Err(HttpError::BodyTooLarge),
        Some(n) => Ok(BodyFraming::Length(n)),
    }
}

fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    const BAD: HttpError = HttpError::BadFraming("invalid Content-Length");
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    Ok(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Incremental decoder of a chunked request body (RFC 9112 section 7.1).
///
/// Feed it the bytes after the head with [`ChunkedDecoder::decode`]; it appends decoded
/// data to the caller's buffer, consumes everything it can use and reports when the last
/// chunk and trailers have been read. The decoded size is bounded by the limit given to
/// [`ChunkedDecoder::new`].
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    max_body: usize,
    decoded: usize,
    line_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size.
    Size { size: u64, digits: u8 },
    /// After the size: optional whitespace and extensions until CR LF.
    SizeRest {
        size: u64,
        saw_cr: bool,
        in_ext: bool,
    },
    /// Reading `remaining` data bytes.
    Data { remaining: u64 },
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine { saw_cr: bool },
    /// Expecting LF of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

impl ChunkedDecoder {
    /// A decoder for one body of at most `max_body` decoded bytes.
    pub fn new(max_body: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            max_body,
            decoded: 0,
            line_len: 0,
        }
    }

    /// True once the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns how many input bytes
    /// were consumed and whether the body is complete; bytes after the end are not consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        const BAD: HttpError = HttpError::Malformed("invalid chunked body");
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => break,
                ChunkState::Size { size, digits } => {
                    if let Some(d) = hex_digit(b) {
                        if digits >= 15 {
                            return Err(HttpError::BodyTooLarge);
                        }
                        self.state = ChunkState::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                        };
                        self.bump_line()?;
                        i += 1;
                    } else if digits == 0 {
                        return Err(BAD);
                    } else {
                        self.state = ChunkState::SizeRest {
                            size,
                            saw_cr: false,
                            in_ext: false,
                        };
                    }
                }
                ChunkState::SizeRest {
                    size,
                    saw_cr,
                    in_ext,
                } => {
                    i += 1;
                    self.bump_line()?;
                    match (b, saw_cr) {
                        (b'\n', _) => {
                            self.line_len = 0;
                            if size == 0 {
                                self.state = ChunkState::TrailerStart;
                            } else {
                                if size > (self.max_body - self.decoded) as u64 {
                                    return Err(HttpError::BodyTooLarge);
                                }
                                self.state = ChunkState::Data { remaining: size };
                            }
                        }
                        (_, true) => return Err(BAD),
                        (b'\r', false) => {
                            self.state = ChunkState::SizeRest {
                                size,
                                saw_cr: true,
                                in_ext,
                            }
                        }
                        // Chunk extensions (`;name=value`) are ignored.
                        (b';', false) => {
                            self.state = ChunkState::SizeRest {
                                size,
                                saw_cr: false,
                                in_ext: true,
                            }
                        }
                        (b' ' | b'\t', false) => {}
                        (c, false) if in_ext && (c.is_ascii_graphic() || c == b'\t') => {}
                        _ => return Err(BAD),
                    }
                }
                ChunkState::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    out.extend_from_slice(&input[i..i + take]);
                    self.decoded += take;
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                }
                ChunkState::DataCr => {
                    i += 1;
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => ChunkState::Size { size: 0, digits: 0 },
                        _ => return Err(BAD),
                    };
                }
                ChunkState::DataLf => {
                    i += 1;
                    if b != b'\n' {
                        return Err(BAD);
                    }
                    self.state = ChunkState::Size { size: 0, digits: 0 };
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    self.bump_trailer()?;
                    self.state = match b {
                        b'\r' => ChunkState::FinalLf,
                        b'\n' => ChunkState::Done,
                        _ => ChunkState::TrailerLine { saw_cr: false },
                    };
                }
                ChunkState::TrailerLine { saw_cr } => {
                    i += 1;
                    self.bump_trailer()?;
                    self.state = match (b, saw_cr) {
                        (b'\n', _) => ChunkState::TrailerStart,
                        (_, true) => return Err(BAD),
                        (b'\r', false) => ChunkState::TrailerLine { saw_cr: true },
                        _ => ChunkState::TrailerLine { saw_cr: false },
                    };
                }
                ChunkState::FinalLf => {
                    i += 1;
                    if b != b'\n' {
                        return Err(BAD);
                    }
                    self.state = ChunkState::Done;
                }
            }
        }
        Ok((i, self.is_done()))
    }

    fn bump_line(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE_BYTES {
            return Err(HttpError::Malformed("chunk size line too long"));
        }
        Ok(())
    }

    fn bump_trailer(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_TRAILER_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(())
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// `Content-Length: n`.
    Length(usize),
    /// `Transfer-Encoding: chunked`; write chunks with [`write_chunk`] and end with
    /// [`LAST_CHUNK`].
    Chunked,
    /// Neither header (101 responses, or a body ended by closing the connection).
    Unframed,
}

/// The reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends a response head: status line, the given fields, the body framing field and,
/// when `keep_alive` is false, `Connection: close`; then the blank line.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: ResponseBody,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body {
        ResponseBody::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        ResponseBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ResponseBody::Unframed => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a whole response: head with `Content-Length` and the body.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    write_response_head(
        out,
        status,
        headers,
        ResponseBody::Length(body.len()),
        keep_alive,
    );
    out.extend_from_slice(body);
}

/// The terminating chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the size line of a chunk of `len` bytes (`len` must not be 0: that is the last
/// chunk).
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len > 0, "a zero-length chunk ends the body");
    push_hex(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk. Empty data appends nothing (it would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` in lowercase hexadecimal.
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?channel=news HTTP/1.1\r\n\
        Host: example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(buf: &[u8]) -> Result<Parsed<(Method, String, u8, usize)>, HttpError> {
        let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
        let r = parse_request(buf, &mut headers, &Limits::default())?;
        Ok(match r {
            Parsed::Complete(r) => {
                Parsed::Complete((r.method, r.target.to_string(), r.version, r.head_len))
            }
            Parsed::Partial => Parsed::Partial,
        })
    }

    fn with_request<T>(buf: &[u8], f: impl FnOnce(&Request<'_, '_>) -> T) -> T {
        let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
        match parse_request(buf, &mut headers, &Limits::default()) {
            Ok(Parsed::Complete(r)) => f(&r),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_upgrade_head() {
        with_request(UPGRADE, |r| {
            assert_eq!(r.method, Method::Get);
            assert_eq!(r.target, "/ws?channel=news");
            assert_eq!(r.path(), "/ws");
            assert_eq!(r.query(), "channel=news");
            assert_eq!(r.version, 1);
            assert_eq!(r.head_len, UPGRADE.len());
            assert_eq!(r.header("HOST"), Some(&b"example.com"[..]));
            assert_eq!(r.header_str("sec-websocket-version"), Some("13"));
            assert!(r.has_token("Connection", "upgrade"));
            assert!(r.has_token("connection", "Keep-Alive"));
            assert!(!r.has_token("connection", "close"));
            assert!(r.keep_alive());
        });
    }

    #[test]
    fn every_strict_prefix_is_partial() {
        for n in 0..UPGRADE.len() {
            assert_eq!(parse(&UPGRADE[..n]), Ok(Parsed::Partial), "prefix {n}");
        }
        assert!(matches!(parse(UPGRADE), Ok(Parsed::Complete(_))));
    }

    #[test]
    fn bytes_after_head_are_not_consumed() {
        let mut buf = UPGRADE.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n");
        match parse(&buf).unwrap() {
            Parsed::Complete((_, _, _, len)) => assert_eq!(len, UPGRADE.len()),
            Parsed::Partial => panic!("complete head expected"),
        }
    }

    #[test]
    fn head_limit_applies_to_partial_and_complete_heads() {
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
        big.resize(DEFAULT_MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse(&big), Err(HttpError::HeadTooLarge));
        big.truncate(DEFAULT_MAX_HEAD_BYTES);
        assert_eq!(parse(&big), Ok(Parsed::Partial));
        big.truncate(DEFAULT_MAX_HEAD_BYTES - 2);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&big), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn header_count_limit() {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 1..DEFAULT_MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&head), Ok(Parsed::Complete(_))));
        let mut over = head[..head.len() - 2].to_vec();
        over.extend_from_slice(b"X-last: v\r\n\r\n");
        assert_eq!(parse(&over), Err(HttpError::TooManyHeaders));
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn errors_map_to_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/0.9\r\n\r\n", 505),
            (b"GET / FOO/1.1\r\n\r\n", 400),
            (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
            (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
            (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        ];
        for (input, status) in cases {
            let got = parse(input).map(|_| ()).unwrap_err();
            assert_eq!(
                got.status(),
                *status,
                "{:?}: {got:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn http10_keep_alive_rules() {
        with_request(b"GET / HTTP/1.0\r\n\r\n", |r| {
            assert_eq!(r.version, 0);
            assert!(!r.keep_alive());
        });
        with_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", |r| {
            assert!(r.keep_alive())
        });
        with_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            |r| assert!(!r.keep_alive()),
        );
    }

    #[test]
    fn token_lists() {
        let t: Vec<&[u8]> = tokens(b" a ,, b\t,c ,").collect();
        assert_eq!(t, vec![&b"a"[..], b"b", b"c"]);
        let headers = [
            Header {
                name: "Connection",
                value: b"keep-alive",
            },
            Header {
                name: "connection",
                value: b"foo, Upgrade",
            },
        ];
        assert!(has_token(&headers, "CONNECTION", "upgrade"));
        assert!(!has_token(&headers, "connection", "upgrad"));
    }

    fn framing(buf: &[u8]) -> Result<BodyFraming, HttpError> {
        with_request(buf, |r| body_framing(r, &Limits::default()))
    }

    #[test]
    fn body_framing_rules() {
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            framing(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
            ),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        let bad: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        ];
        for (input, status) in bad {
            let err = framing(input).unwrap_err();
            assert_eq!(
                err.status(),
                *status,
                "{:?}: {err:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn dechunk(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let (used, done) = d.decode(input, &mut out)?;
        assert!(done, "body should be complete");
        Ok((out, used))
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: v\r\n\r\nNEXT";
        let (out, used) = dechunk(body, 100).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(&body[used..], b"NEXT");
        assert_eq!(dechunk(b"0\r\n\r\n", 10).unwrap().0, b"");
        assert_eq!(
            dechunk(b"A\r\n0123456789\r\n0\r\n\r\n", 10).unwrap().0,
            b"0123456789"
        );
        assert_eq!(
            dechunk(b"B\r\n0123456789a\r\n0\r\n\r\n", 10).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert!(dechunk(b"zz\r\n", 10).is_err());
        assert!(dechunk(b"5z\r\nhello\r\n0\r\n\r\n", 10).is_err());
        assert!(dechunk(b"3\r\nabcX\r\n", 10).is_err());
        assert!(dechunk(b"3\r\nabc\r\n0\rX", 10).is_err());
        assert_eq!(
            dechunk(b"fffffffffffffffff\r\n", 10).unwrap_err(),
            HttpError::BodyTooLarge
        );
    }

    #[test]
    fn chunked_decodes_byte_by_byte() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        for (i, b) in body.iter().enumerate() {
            let (used, done) = d.decode(std::slice::from_ref(b), &mut out).unwrap();
            assert_eq!(used, 1);
            assert_eq!(done, i == body.len() - 1);
        }
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn response_heads_and_chunks() {
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            200,
            &[("Content-Type", "text/event-stream")],
            ResponseBody::Chunked,
            true,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        out.clear();
        write_response(&mut out, 404, &[], b"nope", false);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
        );
        out.clear();
        write_chunk(&mut out, &[b'x'; 26]);
        write_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        out.clear();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }
}
