//! The client's address behind a proxy: `trusted_proxies` (addresses and CIDR blocks),
//! and `X-Forwarded-For` read the only way that cannot be spoofed (from the right, past
//! the trusted hops). The PROXY protocol header itself is parsed by
//! [`protocol::proxy`]; the worker applies both (`worker/logs.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One `trusted_proxies` entry: an address (`10.0.0.5`, `::1`) or a block
/// (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/BITS`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.len() <= 3 && b.bytes().all(|c| c.is_ascii_digit()) => {
                b.parse().ok().filter(|&n| n <= max)?
            }
            Some(_) => return None,
        };
        Some(Cidr { net, bits })
    }

    /// True when `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// The parsed `trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    /// From the configuration's entries; the first one that does not parse is the error.
    pub fn parse(entries: &[String]) -> Result<Trusted, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e).ok_or_else(|| e.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map(Trusted)
    }

    /// True when no proxy is trusted (the feature is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address from the `X-Forwarded-For` fields (in order) of a request
    /// that came from a trusted proxy: the right-most address that is not itself a
    /// trusted proxy. `None` without the header, or when an entry on the way is not an
    /// address (nothing to its left can be believed then).
    pub fn forwarded_for<'a>(&self, fields: impl Iterator<Item = &'a [u8]>) -> Option<IpAddr> {
        let fields: Vec<&[u8]> = fields.collect();
        let mut last_trusted = None;
        for field in fields.iter().rev() {
            let text = std::str::from_utf8(field).ok()?;
            for item in text.rsplit(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let ip = parse_forwarded_ip(item)?;
                if !self.contains(ip) {
                    return Some(canonical(ip));
                }
                last_trusted = Some(canonical(ip));
            }
        }
        // Every hop is trusted: the left-most is the client as far as anyone can tell.
        last_trusted
    }
}

/// An `X-Forwarded-For` item: an address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`), or a bracketed IPv6 address.
fn parse_forwarded_ip(item: &str) -> Option<IpAddr> {
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = item.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = item.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let c = Cidr::parse("192.168.1.128/25").unwrap();
        assert!(c.contains(ip("192.168.1.200")));
        assert!(!c.contains(ip("192.168.1.127")));
        let c = Cidr::parse("127.0.0.1").unwrap();
        assert!(c.contains(ip("127.0.0.1")) && !c.contains(ip("127.0.0.2")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "1.2.3.4/+1",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted() {
        let t = Trusted::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let xff = |fields: &[&str]| t.forwarded_for(fields.iter().map(|f| f.as_bytes()));
        assert_eq!(xff(&["203.0.113.9"]), Some(ip("203.0.113.9")));
        // A client's own made-up entry on the left is not believed.
        assert_eq!(
            xff(&["6.6.6.6, 203.0.113.9, 10.1.1.1"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.9:4711, 10.1.1.1"]),
            Some(ip("203.0.113.9")),
            "several fields are one list"
        );
        assert_eq!(xff(&["[2001:db8::5]:80"]), Some(ip("2001:db8::5")));
        assert_eq!(xff(&["10.0.0.2, 10.0.0.3"]), Some(ip("10.0.0.2")));
        assert_eq!(xff(&["6.6.6.6, garbage, 10.0.0.3"]), None);
        assert_eq!(xff(&[]), None);
    }
}
