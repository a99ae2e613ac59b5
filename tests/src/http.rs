//! Raw HTTP: [`Conn`] (a buffered socket whose every read has a deadline: requests,
//! heads, `Content-Length`/chunked/unframed bodies), [`Head`], [`Response`], [`ReadError`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TIMEOUT;

/// Why a read ended without what was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing (complete) arrived in time.
    Timeout,
    /// The peer closed the connection (EOF, or a reset).
    Closed,
    /// The bytes do not parse.
    Malformed(String),
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Head.
    pub head: Head,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// A header field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text (panics when not UTF-8).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// The body as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A buffered client socket whose every read has a deadline.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects (panics on failure).
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects from the loopback address `source` (127.0.0.2, ...): another client
    /// address for the per-address limits.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> io::Result<Conn> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(source, 0).into())?;
        sock.connect_timeout(&addr.into(), TIMEOUT)?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes all of `data`.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// Writes a request: `Host`, the given fields, `Content-Length` when there is a body
    /// (or the method is POST), and `Connection: close` when `close`.
    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes)
            .unwrap_or_else(|e| panic!("send {method} {target}: {e}"));
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    pub fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Consumes and returns the bytes up to and including the first `pat`.
    pub fn take_until(&mut self, pat: &[u8], timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut from = 0;
        loop {
            if let Some(i) = find(&self.buf[from..], pat) {
                let end = from + i + pat.len();
                return Ok(self.buf.drain(..end).collect());
            }
            from = self.buf.len().saturating_sub(pat.len());
            self.fill(deadline)?;
        }
    }

    /// Consumes and returns exactly `n` bytes.
    pub fn take_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n {
            self.fill(deadline)?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a response head.
    pub fn read_head(&mut self, timeout: Duration) -> Result<Head, ReadError> {
        let raw = self.take_until(b"\r\n\r\n", timeout)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            other => {
                return Err(ReadError::Malformed(format!(
                    "bad response head {other:?}: {:?}",
                    String::from_utf8_lossy(&raw)
                )))
            }
        }
        Ok(Head {
            status: resp.code.unwrap_or(0),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        })
    }

    /// Reads one chunk of a chunked body; `None` for the last chunk (trailers consumed).
    pub fn read_chunk(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ReadError> {
        let deadline = Instant::now() + timeout;
        let line = self.take_until(b"\r\n", timeout)?;
        let size_text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Malformed(format!("bad chunk size line {size_text:?}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let l = self.take_until(b"\r\n", left)?;
                if l.len() == 2 {
                    return Ok(None);
                }
            }
        }
        let data = self.take_exact(size + 2, left)?;
        if &data[size..] != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
        Ok(Some(data[..size].to_vec()))
    }

    /// Reads a whole response: head, then a body framed by `Content-Length`, chunked
    /// encoding, or the end of the connection.
    pub fn read_response(&mut self, timeout: Duration) -> Result<Response, ReadError> {
        let deadline = Instant::now() + timeout;
        let head = self.read_head(timeout)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        let body = if let Some(len) = head.header("content-length") {
            let n: usize = len
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {len:?}")))?;
            self.take_exact(n, left())?
        } else if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk(left())? {
                body.extend_from_slice(&chunk);
            }
            body
        } else if head.status == 101 || head.status == 204 || head.status == 304 {
            Vec::new()
        } else {
            self.read_to_eof(left())?
        };
        Ok(Response {
            status: head.status,
            head,
            body,
        })
    }

    /// Reads until the peer closes; returns everything not consumed before.
    pub fn read_to_eof(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(_) => {}
                Err(ReadError::Closed) => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(e),
            }
        }
    }

    /// True when the peer closes (EOF or reset) within `timeout`, whatever it sends
    /// before.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.read_to_eof(timeout).is_ok()
    }
}

fn find(hay: &[u8], pat: &[u8]) -> Option<usize> {
    if pat.is_empty() || hay.len() < pat.len() {
        return None;
    }
    hay.windows(pat.len()).position(|w| w == pat)
}
