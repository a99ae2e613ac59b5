//! Target URLs, channel templates and source addresses.
//!
//! A URL is `ws[s]://HOST[:PORT]/PATH[?QUERY]` or `http[s]://HOST[:PORT]/PATH[?QUERY]`
//! where HOST is an IP literal (`127.0.0.1`, `[::1]`), `localhost` (always 127.0.0.1) or a
//! name, resolved once when the URL is parsed (its first IPv4 address, else its first
//! address). No user info.
//!
//! Only targets on this machine (loopback addresses) are accepted unless the user says
//! otherwise with [`ALLOW_REMOTE_FLAG`]: a load generator that can be pointed at any host
//! by a typo is a flooding tool. [`check_reach`] is that check; source addresses get the
//! same one in [`parse_sources`].
//!
//! Channels: `{c}` anywhere in the URL is replaced by the channel name
//! ([`ChannelSpec::Template`]); a URL that already names its channel (`channel=`, `cname=`
//! or `id=` in the query) is [`ChannelSpec::Fixed`]; any other URL gets `channel=NAME`
//! appended ([`ChannelSpec::Append`]). Generated names are `ch0`, `ch1`, ...

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use protocol::query::{self, Query};

/// The placeholder replaced by the channel name.
pub const CHANNEL_PLACEHOLDER: &str = "{c}";
/// Query keys that name a channel (pushedge `channel` / `cname`, nchan `id`).
pub const CHANNEL_KEYS: &[&str] = &["channel", "cname", "id"];
/// Most source addresses a `--sources` list may expand to.
pub const MAX_SOURCES: usize = 65_536;
/// The flag that allows targets (and source addresses) off the loopback interface.
pub const ALLOW_REMOTE_FLAG: &str = "--allow-remote";
/// Longest host name accepted in a URL (DNS limit).
pub const MAX_HOST_NAME: usize = 253;

/// The URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `ws://`
    Ws,
    /// `http://`
    Http,
}

/// A parsed URL, its host resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The scheme.
    pub scheme: Scheme,
    /// `wss://` or `https://`: TLS under the scheme.
    pub tls: bool,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The authority as written, for the `Host` header.
    pub host: String,
    /// Path and query, possibly holding `{c}`.
    pub path_and_query: String,
}

/// How a URL names its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSpec {
    /// `{c}` is replaced by the channel name.
    Template,
    /// The URL names one channel itself.
    Fixed(String),
    /// `channel=NAME` is appended to the query.
    Append,
}

/// A URL or address list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UrlError> {
    Err(UrlError(msg.into()))
}

impl Target {
    /// Parses and checks a URL that must be on this machine (see the module documentation).
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        Target::parse_with(url, false)
    }

    /// Parses and checks a URL; with `allow_remote` (`--allow-remote`) its host may be
    /// any host.
    pub fn parse_with(url: &str, allow_remote: bool) -> Result<Target, UrlError> {
        let (scheme, tls, rest) = match url.split_once("://") {
            Some(("ws", rest)) => (Scheme::Ws, false, rest),
            Some(("http", rest)) => (Scheme::Http, false, rest),
            Some(("wss", rest)) => (Scheme::Ws, true, rest),
            Some(("https", rest)) => (Scheme::Http, true, rest),
            Some((s, _)) => {
                return err(format!(
                    "{url}: unsupported scheme {s:?} (ws, wss, http or https)"
                ))
            }
            None => return err(format!("{url}: missing scheme (ws:// or http://)")),
        };
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path_and_query = if path_and_query.starts_with('?') {
            format!("/{path_and_query}")
        } else {
            path_and_query.to_string()
        };
        if path_and_query.contains('#') {
            return err(format!("{url}: fragments are not sent to servers"));
        }
        if path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return err(format!("{url}: spaces or control characters in the path"));
        }
        if authority.contains('@') {
            return err(format!("{url}: user info is not supported"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| UrlError(format!("{url}: bad host or port {authority:?}")))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        let ip = resolve(host, port).map_err(|e| UrlError(format!("{url}: {e}")))?;
        check_reach(host, ip, allow_remote).map_err(|e| UrlError(format!("{url}: {e}")))?;
        Ok(Target {
            scheme,
            tls,
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path_and_query,
        })
    }

    /// Whether the target is off this machine (only with `--allow-remote`).
    pub fn is_remote(&self) -> bool {
        !self.addr.ip().is_loopback()
    }

    /// How this URL names its channel.
    pub fn channel_spec(&self) -> ChannelSpec {
        if self.path_and_query.contains(CHANNEL_PLACEHOLDER) {
            return ChannelSpec::Template;
        }
        let (_, q) = query::split_target(&self.path_and_query);
        if let Some(q) = q {
            if let Ok(q) = Query::parse(q) {
                if let Some(name) = q.get_any(CHANNEL_KEYS) {
                    return ChannelSpec::Fixed(name.to_string());
                }
            }
        }
        ChannelSpec::Append
    }

    /// The request target (path and query) for channel `name`.
    pub fn target_for(&self, name: &str) -> String {
        match self.channel_spec() {
            ChannelSpec::Template => self.path_and_query.replace(CHANNEL_PLACEHOLDER, name),
            ChannelSpec::Fixed(_) => self.path_and_query.clone(),
            ChannelSpec::Append => {
                let sep = if self.path_and_query.contains('?') {
                    if self.path_and_query.ends_with(['?', '&']) {
                        ""
                    } else {
                        "&"
                    }
                } else {
                    "?"
                };
                format!("{}{sep}channel={name}", self.path_and_query)
            }
        }
    }

    /// The request target of a Socket.IO connection for channel `name`: the path and
    /// query with `{c}` replaced by `name`, and `EIO=4` and `transport=websocket` added
    /// when the query has no `EIO` or `transport` of its own. Nothing else is appended:
    /// the channel is a room, named in the CONNECT packet.
    pub fn socketio_target_for(&self, name: &str) -> String {
        let mut t = self.path_and_query.replace(CHANNEL_PLACEHOLDER, name);
        let (_, q) = query::split_target(&t);
        let q = q.and_then(|q| Query::parse(q).ok());
        let has = |k: &str| q.as_ref().is_some_and(|q| q.get(k).is_some());
        let missing: Vec<&str> = [("EIO", "EIO=4"), ("transport", "transport=websocket")]
            .into_iter()
            .filter(|(k, _)| !has(k))
            .map(|(_, kv)| kv)
            .collect();
        for kv in missing {
            if !t.contains('?') {
                t.push('?');
            } else if !t.ends_with(['?', '&']) {
                t.push('&');
            }
            t.push_str(kv);
        }
        t
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        query::split_target(&self.path_and_query).0
    }

    /// The host without the port (and without the brackets of an IPv6 literal): the
    /// default TLS server name.
    pub fn hostname(&self) -> &str {
        match split_host_port(&self.host) {
            Some((h, _)) => h,
            None => &self.host,
        }
    }
}

/// The address `host` names: an IP literal is itself, `localhost` is 127.0.0.1, a name
/// is looked up ([`lookup`]).
pub fn resolve(host: &str, port: u16) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let name_ok = !host.is_empty()
        && host.len() <= MAX_HOST_NAME
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !name_ok {
        return Err(format!("bad host {host:?}"));
    }
    lookup(host, port)
}

/// Looks a host name up (the system resolver: /etc/hosts, DNS): its first IPv4 address,
/// else its first address.
pub fn lookup(host: &str, port: u16) -> Result<IpAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// The remote-target check: `ip` (what `host` resolved to) must be on this machine (a
/// loopback address) unless `allow_remote`.
pub fn check_reach(host: &str, ip: IpAddr, allow_remote: bool) -> Result<(), String> {
    if allow_remote || ip.is_loopback() {
        return Ok(());
    }
    let shown = if host.parse::<IpAddr>() == Ok(ip) {
        ip.to_string()
    } else {
        format!("{host} ({ip})")
    };
    Err(format!(
        "{shown} is not a loopback address, not this machine; \
         loadgen loads a remote target only with {ALLOW_REMOTE_FLAG}"
    ))
}

/// Splits `host[:port]` / `[v6][:port]`. `None` when malformed.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None if authority.is_empty() => None,
        None => Some((authority, None)),
    }
}

/// The channel names of a run: `ch0..ch{count-1}`, or the one name a URL fixes.
pub fn channel_names(urls: &[&Target], count: u32) -> Result<Vec<String>, UrlError> {
    let mut fixed: Option<String> = None;
    for t in urls {
        if let ChannelSpec::Fixed(name) = t.channel_spec() {
            match &fixed {
                Some(f) if *f != name => {
                    return err(format!(
                        "the URLs name different channels ({f:?} and {name:?})"
                    ))
                }
                _ => fixed = Some(name),
            }
        }
    }
    if count == 0 {
        return err("--channels must be at least 1");
    }
    match fixed {
        Some(name) if count == 1 => Ok(vec![name]),
        Some(name) => err(format!(
            "the URL names one channel ({name:?}); use {CHANNEL_PLACEHOLDER} in it for --channels {count}"
        )),
        None => Ok((0..count).map(|i| format!("ch{i}")).collect()),
    }
}

/// Parses a source address list: items separated by commas, each an address or an IPv4
/// range `A-B` (inclusive). Every address must be loopback unless `allow_remote`
/// (`--allow-remote`: any address of this machine's interfaces; binding checks it).
pub fn parse_sources(spec: &str, allow_remote: bool) -> Result<Vec<IpAddr>, UrlError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| UrlError(format!("bad source address {a:?}")))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| UrlError(format!("bad source address {b:?}")))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi {
                return err(format!("source range {item} is backwards"));
            }
            if (hi - lo) as usize >= MAX_SOURCES {
                return err(format!("source range {item} is too large"));
            }
            out.extend((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            out.push(
                item.parse::<IpAddr>()
                    .map_err(|_| UrlError(format!("bad source address {item:?}")))?,
            );
        }
        if out.len() > MAX_SOURCES {
            return err(format!("more than {MAX_SOURCES} source addresses"));
        }
    }
    if let Some(bad) = out.iter().find(|ip| !allow_remote && !ip.is_loopback()) {
        return err(format!(
            "source {bad} is not a loopback address; other source addresses need {ALLOW_REMOTE_FLAG}"
        ));
    }
    if out.is_empty() {
        return err("empty source address list");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:8100/ws?channel={c}").unwrap();
        assert_eq!(t.scheme, Scheme::Ws);
        assert_eq!(t.addr, "127.0.0.1:8100".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8100");
        assert_eq!(t.path_and_query, "/ws?channel={c}");
        assert_eq!(t.path(), "/ws");

        let t = Target::parse("http://localhost/sse").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.host, "localhost");

        let t = Target::parse("http://[::1]:81?x=1").unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert_eq!(t.path_and_query, "/?x=1");

        let t = Target::parse("ws://127.0.0.9:1").unwrap();
        assert_eq!(t.path_and_query, "/");
        assert!(!t.tls);

        let t = Target::parse("wss://localhost/ws?channel={c}").unwrap();
        assert_eq!((t.scheme, t.tls), (Scheme::Ws, true));
        assert_eq!(t.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(t.hostname(), "localhost");
        let t = Target::parse("https://[::1]:8443/sse").unwrap();
        assert_eq!((t.scheme, t.tls), (Scheme::Http, true));
        assert_eq!(t.addr, "[::1]:8443".parse().unwrap());
        assert_eq!(t.hostname(), "::1");
        assert_eq!(
            Target::parse("ws://127.0.0.1:8100/ws").unwrap().hostname(),
            "127.0.0.1"
        );
    }

    #[test]
    fn refuses_other_hosts_and_schemes() {
        for bad in [
            "ws://10.0.0.1:8100/ws",
            "http://no-such-host.invalid/sse",
            "http://[2001:db8::1]:80/",
            "wss://192.0.2.1/ws",
            "ws://:80/ws",
            "ws://a%20b/ws",
            "https://10.0.0.1/",
            "ftp://127.0.0.1/",
            "127.0.0.1:8100/ws",
            "ws://user@127.0.0.1/ws",
            "ws://127.0.0.1:99999/ws",
            "ws://127.0.0.1:/ws",
            "ws:///ws",
            "ws://127.0.0.1/a b",
            "ws://127.0.0.1/ws#frag",
            "ws://::1/ws",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_templates() {
        let t = Target::parse("ws://127.0.0.1:8100/ws?channel={c}&since=1").unwrap();
        assert_eq!(t.channel_spec(), ChannelSpec::Template);
        assert_eq!(t.target_for("ch3"), "/ws?channel=ch3&since=1");

        let nchan = Target::parse("http://127.0.0.1/sub?id={c}").unwrap();
        assert_eq!(nchan.target_for("ch0"), "/sub?id=ch0");

        let t = Target::parse("http://127.0.0.1:8100/sse").unwrap();
        assert_eq!(t.channel_spec(), ChannelSpec::Append);
        assert_eq!(t.target_for("ch1"), "/sse?channel=ch1");
        let t = Target::parse("http://127.0.0.1:8100/sse?since=0").unwrap();
        assert_eq!(t.target_for("ch1"), "/sse?since=0&channel=ch1");
        let t = Target::parse("http://127.0.0.1:8100/sse?").unwrap();
        assert_eq!(t.target_for("ch1"), "/sse?channel=ch1");

        let t = Target::parse("ws://127.0.0.1:8100/ws?channel=news").unwrap();
        assert_eq!(t.channel_spec(), ChannelSpec::Fixed("news".into()));
        assert_eq!(t.target_for("ignored"), "/ws?channel=news");
        let t = Target::parse("http://127.0.0.1/sub?id=a%3Ab").unwrap();
        assert_eq!(t.channel_spec(), ChannelSpec::Fixed("a:b".into()));
    }

    #[test]
    fn socketio_targets() {
        let t = Target::parse("ws://127.0.0.1:8100/socket.io/").unwrap();
        assert_eq!(
            t.socketio_target_for("ch0"),
            "/socket.io/?EIO=4&transport=websocket"
        );
        let t = Target::parse("http://127.0.0.1:8100/socket.io/?token=abc&").unwrap();
        assert_eq!(
            t.socketio_target_for("ch0"),
            "/socket.io/?token=abc&EIO=4&transport=websocket"
        );
        let t = Target::parse("ws://127.0.0.1:8100/socket.io/?EIO=4&transport=websocket&r={c}")
            .unwrap();
        assert_eq!(
            t.socketio_target_for("ch3"),
            "/socket.io/?EIO=4&transport=websocket&r=ch3"
        );
        let t = Target::parse("ws://127.0.0.1:8100/sio?EIO=3").unwrap();
        assert_eq!(t.socketio_target_for("a"), "/sio?EIO=3&transport=websocket");
    }

    #[test]
    fn channel_names_follow_the_urls() {
        let sub = Target::parse("ws://127.0.0.1:8100/ws?channel={c}").unwrap();
        let publ = Target::parse("http://127.0.0.1:8000/pub").unwrap();
        assert_eq!(
            channel_names(&[&sub, &publ], 3).unwrap(),
            vec!["ch0", "ch1", "ch2"]
        );
        let fixed = Target::parse("ws://127.0.0.1:8100/ws?channel=news").unwrap();
        assert_eq!(channel_names(&[&fixed, &publ], 1).unwrap(), vec!["news"]);
        assert!(channel_names(&[&fixed, &publ], 2).is_err());
        let other = Target::parse("http://127.0.0.1:8000/pub?channel=sport").unwrap();
        assert!(channel_names(&[&fixed, &other], 1).is_err());
        assert!(channel_names(&[&sub], 0).is_err());
        // The publisher then appends the fixed name.
        assert_eq!(publ.target_for("news"), "/pub?channel=news");
    }

    #[test]
    fn source_lists() {
        let s = parse_sources("127.0.0.2-127.0.0.4", false).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        let s = parse_sources("127.0.0.2, 127.0.1.1-127.0.1.2,::1", false).unwrap();
        assert_eq!(s.len(), 4);
        assert!(parse_sources("127.0.0.4-127.0.0.2", false).is_err());
        assert!(parse_sources("10.0.0.1", false).is_err());
        assert!(parse_sources("127.0.0.255-128.0.0.1", false).is_err());
        assert!(parse_sources("", false).is_err());
        assert!(parse_sources("127.0.0.x", false).is_err());
        assert!(parse_sources("127.0.0.0-127.255.255.255", false).is_err());
    }

    #[test]
    fn remote_sources_need_the_flag() {
        let e = parse_sources("10.0.0.1", false).unwrap_err();
        assert!(e.0.contains(ALLOW_REMOTE_FLAG), "{e}");
        assert_eq!(
            parse_sources("10.0.0.1-10.0.0.2", true).unwrap(),
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert!(parse_sources("10.0.0.x", true).is_err());
    }

    #[test]
    fn reach_check() {
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        // IP literals.
        assert_eq!(check_reach("127.0.0.1", local, false), Ok(()));
        assert_eq!(check_reach("::1", v6, false), Ok(()));
        let e = check_reach("192.0.2.1", remote, false).unwrap_err();
        assert!(e.starts_with("192.0.2.1 is not a loopback address"), "{e}");
        assert!(e.contains(ALLOW_REMOTE_FLAG), "{e}");
        assert_eq!(check_reach("192.0.2.1", remote, true), Ok(()));
        // Names: what they resolve to decides, and the message shows both.
        assert_eq!(check_reach("push.test", local, false), Ok(()));
        let e = check_reach("push.example", remote, false).unwrap_err();
        assert!(e.starts_with("push.example (192.0.2.1) is not"), "{e}");
        assert_eq!(check_reach("push.example", remote, true), Ok(()));
    }

    #[test]
    fn remote_urls_need_the_flag() {
        // A remote IP literal: refused without the flag (naming it), parsed with it; no
        // connection is made either way.
        for url in [
            "ws://192.0.2.1:8100/ws?channel={c}",
            "https://[2001:db8::1]/sse",
        ] {
            let e = Target::parse_with(url, false).unwrap_err();
            assert!(e.0.contains(ALLOW_REMOTE_FLAG), "{e}");
            assert!(e.0.contains("loopback"), "{e}");
            let t = Target::parse_with(url, true).unwrap();
            assert!(t.is_remote());
        }
        let t = Target::parse_with("ws://192.0.2.1:8100/ws", true).unwrap();
        assert_eq!(t.addr, "192.0.2.1:8100".parse().unwrap());
        assert_eq!(t.host, "192.0.2.1:8100");
        assert_eq!(t.hostname(), "192.0.2.1");
        // Loopback targets are the same with or without the flag.
        for allow in [false, true] {
            let t = Target::parse_with("ws://127.0.0.1:8100/ws", allow).unwrap();
            assert!(!t.is_remote());
            let t = Target::parse_with("http://LocalHost:81/sse", allow).unwrap();
            assert_eq!(t.addr, "127.0.0.1:81".parse().unwrap());
        }
        // A name that does not resolve is refused with the flag too.
        assert!(Target::parse_with("ws://no-such-host.invalid/ws", true).is_err());
    }

    #[test]
    fn names_are_resolved() {
        // Through the system resolver (/etc/hosts): localhost is loopback, so it passes
        // the check without the flag.
        let ip = lookup("localhost", 80).unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert_eq!(check_reach("localhost", ip, false), Ok(()));
        assert_eq!(resolve("127.0.0.5", 1), Ok("127.0.0.5".parse().unwrap()));
        assert_eq!(resolve("localhost", 1), Ok(Ipv4Addr::LOCALHOST.into()));
        assert!(resolve("", 1).is_err());
        assert!(resolve("a b", 1).is_err());
        assert!(resolve(&"a".repeat(MAX_HOST_NAME + 1), 1).is_err());
    }
}
