//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer puts at
//! the very start of a TCP connection to say whom it carries.
//!
//! - **v1** is one text line, at most [`V1_MAX_LEN`] bytes with its CRLF:
//!   `PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n` (`TCP6` with IPv6 addresses, or
//!   `PROXY UNKNOWN ...\r\n`, which names no one).
//! - **v2** is binary: the 12-byte [`V2_SIGNATURE`], a version/command byte (`0x20`
//!   LOCAL, `0x21` PROXY), an address family/transport byte, a big-endian length, then
//!   the addresses (IPv4: 12 bytes, IPv6: 36) and optional TLVs (skipped). Its payload is
//!   bounded here by [`V2_MAX_PAYLOAD`].
//!
//! [`parse`] looks at the start of a connection's input: [`Parsed::NotProxy`] as soon as
//! the bytes cannot begin a header (ordinary HTTP), [`Parsed::Partial`] while they still
//! may (every strict prefix of a header is partial), [`Parsed::Complete`] with the header
//! and its length. Nothing is allocated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What every v1 header starts with.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;
/// What every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The v2 fixed part: signature, version/command, family, length.
pub const V2_HEAD_LEN: usize = 16;
/// The largest v2 payload (addresses and TLVs) accepted. The addresses take at most 216
/// bytes (UNIX); the rest is room for a load balancer's TLVs.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// The connection a header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// The client's address; `None` when the header names no one (v1 `UNKNOWN`, v2
    /// `LOCAL` or an unspecified / UNIX family): the connection is the proxy's own.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// The outcome of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The input does not start with a PROXY header.
    NotProxy,
    /// The input may be the start of a header: more is needed.
    Partial,
    /// A whole header, `len` bytes long; what follows it is the connection's data.
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
}

/// A header that began but is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A v1 line longer than [`V1_MAX_LEN`] without its CRLF.
    V1TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6|UNKNOWN ...` with valid fields.
    V1Malformed,
    /// A v2 version nibble other than 2, or a command other than LOCAL / PROXY.
    V2Version,
    /// A v2 payload over [`V2_MAX_PAYLOAD`].
    V2TooLong,
    /// A v2 payload too short for its address family, or an unknown family / transport.
    V2Malformed,
}

impl ProxyError {
    /// A short reason.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::V1TooLong => "PROXY v1 header too long",
            ProxyError::V1Malformed => "malformed PROXY v1 header",
            ProxyError::V2Version => "unsupported PROXY v2 version or command",
            ProxyError::V2TooLong => "PROXY v2 header too long",
            ProxyError::V2Malformed => "malformed PROXY v2 header",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProxyError {}

/// True when `buf` and `sig` agree on their common length.
fn agrees(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if agrees(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    if agrees(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    Ok(Parsed::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        // A bare LF, or a byte no header has, ends it early.
        if window
            .iter()
            .any(|&b| b == b'\n' || (b != b'\r' && !(0x20..0x7f).contains(&b)))
        {
            return Err(ProxyError::V1Malformed);
        }
        return Ok(Parsed::Partial);
    };
    let line =
        std::str::from_utf8(&window[V1_PREFIX.len()..cr]).map_err(|_| ProxyError::V1Malformed)?;
    let len = cr + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(Parsed::Complete {
            header: Header {
                version: 1,
                source: None,
                destination: None,
            },
            len,
        });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1Malformed),
    };
    let mut next = || fields.next().ok_or(ProxyError::V1Malformed);
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed);
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::V1Malformed)
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::V1Malformed);
        }
        s.parse().map_err(|_| ProxyError::V1Malformed)
    };
    Ok(Parsed::Complete {
        header: Header {
            version: 1,
            source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
            destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
        },
        len,
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < V2_HEAD_LEN {
        // Check what is there already: a wrong version is refused at once.
        if buf.len() > 12 && buf[12] >> 4 != 2 {
            return Err(ProxyError::V2Version);
        }
        return Ok(Parsed::Partial);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0F > 1 {
        return Err(ProxyError::V2Version);
    }
    let local = ver_cmd & 0x0F == 0;
    let fam = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    // Family: 0 unspecified, 1 INET, 2 INET6, 3 UNIX; transport: 0 unspecified,
    // 1 stream, 2 datagram.
    let (family, transport) = (fam >> 4, fam & 0x0F);
    if family > 3 || transport > 2 {
        return Err(ProxyError::V2Malformed);
    }
    let need = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if payload < need && !local {
        return Err(ProxyError::V2Malformed);
    }
    let len = V2_HEAD_LEN + payload;
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    let p = &buf[V2_HEAD_LEN..len];
    let port = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let (source, destination) = match family {
        _ if local => (None, None),
        1 => {
            let src = Ipv4Addr::new(p[0], p[1], p[2], p[3]);
            let dst = Ipv4Addr::new(p[4], p[5], p[6], p[7]);
            (
                Some(SocketAddr::new(IpAddr::V4(src), port(8))),
                Some(SocketAddr::new(IpAddr::V4(dst), port(10))),
            )
        }
        2 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[..16]);
            let mut b = [0u8; 16];
            b.copy_from_slice(&p[16..32]);
            (
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port(32))),
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port(34))),
            )
        }
        _ => (None, None),
    };
    Ok(Parsed::Complete {
        header: Header {
            version: 2,
            source,
            destination,
        },
        len,
    })
}

/// Writes a v2 PROXY header for a TCP connection from `source` to `destination` (both
/// of one family): what a load balancer sends; for tests and tools.
pub fn write_v2(out: &mut Vec<u8>, source: SocketAddr, destination: SocketAddr) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("not complete: {other:?} for {buf:?}"),
        }
    }

    fn every_prefix_is_partial(buf: &[u8]) {
        for n in 0..buf.len() {
            assert_eq!(parse(&buf[..n]), Ok(Parsed::Partial), "prefix of {n} bytes");
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let (header, len) = complete(h);
        assert_eq!(len, 45);
        assert_eq!(&h[len..len + 3], b"GET");
        assert_eq!(header.version, 1);
        assert_eq!(header.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(
            header.destination,
            Some("198.51.100.2:443".parse().unwrap())
        );
        every_prefix_is_partial(&h[..len]);
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        let (header, len) = complete(h);
        assert_eq!(len, h.len());
        assert_eq!(header.source, Some("[2001:db8::1]:1".parse().unwrap()));
        every_prefix_is_partial(h);
    }

    #[test]
    fn v1_unknown_names_no_one() {
        let h = b"PROXY UNKNOWN\r\n";
        let (header, len) = complete(h);
        assert_eq!((header.source, len), (None, h.len()));
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(complete(h).0.source, None);
    }

    #[test]
    fn v1_malformed_and_too_long() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 1 extra\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"PROXY TCP4 192.0.2.1\n",
            b"PROXY \x00",
        ] {
            assert_eq!(
                parse(bad),
                Err(ProxyError::V1Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'a');
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        long.truncate(V1_MAX_LEN - 1);
        assert_eq!(parse(&long), Ok(Parsed::Partial));
        // Exactly the bound with its CRLF is fine.
        long.truncate(V1_MAX_LEN - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(complete(&long).1, V1_MAX_LEN);
    }

    #[test]
    fn v2_inet_inet6_local() {
        let mut h = Vec::new();
        let src: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8100".parse().unwrap();
        write_v2(&mut h, src, dst);
        h.extend_from_slice(b"GET /");
        let (header, len) = complete(&h);
        assert_eq!(len, 28);
        assert_eq!(header.version, 2);
        assert_eq!((header.source, header.destination), (Some(src), Some(dst)));
        every_prefix_is_partial(&h[..len]);

        let mut h = Vec::new();
        let src: SocketAddr = "[2001:db8::7]:1234".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        write_v2(&mut h, src, dst);
        let (header, len) = complete(&h);
        assert_eq!((len, header.source), (52, Some(src)));
        every_prefix_is_partial(&h);

        // LOCAL (a health check): no addresses, TLVs skipped.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x03, 1, 2, 3]);
        let (header, len) = complete(&h);
        assert_eq!((header.source, len), (None, 19));
        every_prefix_is_partial(&h);

        // PROXY over INET with TLVs after the addresses.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x10]);
        h.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 0, 81, 0x04, 0, 1, 9]);
        let (header, len) = complete(&h);
        assert_eq!(header.source, Some("1.2.3.4:80".parse().unwrap()));
        assert_eq!(len, 32);
    }

    #[test]
    fn v2_refusals() {
        let head = |ver: u8, fam: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(ver);
            h.push(fam);
            h.extend_from_slice(&len.to_be_bytes());
            h
        };
        assert_eq!(parse(&head(0x11, 0x11, 12)), Err(ProxyError::V2Version));
        assert_eq!(
            parse(&head(0x11, 0, 0)[..13]),
            Err(ProxyError::V2Version),
            "a wrong version is refused before the rest"
        );
        assert_eq!(parse(&head(0x22, 0x11, 12)), Err(ProxyError::V2Version));
        assert_eq!(
            parse(&head(0x21, 0x11, (V2_MAX_PAYLOAD + 1) as u16)),
            Err(ProxyError::V2TooLong)
        );
        assert_eq!(parse(&head(0x21, 0x11, 11)), Err(ProxyError::V2Malformed));
        assert_eq!(parse(&head(0x21, 0x21, 12)), Err(ProxyError::V2Malformed));
        assert_eq!(parse(&head(0x21, 0x41, 12)), Err(ProxyError::V2Malformed));
        assert_eq!(parse(&head(0x21, 0x13, 12)), Err(ProxyError::V2Malformed));
        // The largest payload accepted is partial until it is all there.
        let big = head(0x21, 0x11, V2_MAX_PAYLOAD as u16);
        assert_eq!(parse(&big), Ok(Parsed::Partial));
    }

    #[test]
    fn other_input_is_not_proxy() {
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"PROX\x00",
            b"\r\n\r\n\x01",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse(other), Ok(Parsed::NotProxy), "{other:?}");
        }
        assert_eq!(parse(b"PROX"), Ok(Parsed::Partial));
        assert_eq!(parse(b"\r\n"), Ok(Parsed::Partial));
    }
}
