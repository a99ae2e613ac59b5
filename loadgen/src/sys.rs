//! The few system calls loadgen makes beyond mio: non-blocking connects from a chosen
//! source address, error classification, and the limits it checks before a run.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sockets a child keeps below its open-file limit for its own use (reactor, pipes, ...).
pub const FD_RESERVE: u64 = 200;
/// Sockets per child process by default: under the 20000 open files a process may have
/// here (FACTS.md), with room to spare.
pub const DEFAULT_SOCKETS_PER_PROC: u64 = 19_000;

/// Starts a non-blocking connect to `dst`, bound to `src` first when given. The connect
/// completes (or fails) later: wait for writability and check [`connect_result`].
///
/// With a source address the socket is bound with `IP_BIND_ADDRESS_NO_PORT`, so the
/// kernel picks the port at connect time, per destination: each source address then
/// gives the whole ephemeral range toward the server's address and port.
pub fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let sock = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if let Some(src) = src {
        if src.is_ipv4() {
            set_bind_address_no_port(&sock)?;
        }
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

/// After a writable (or error) event on a connecting socket: `Ok(true)` connected,
/// `Ok(false)` not yet (a spurious event), `Err` the connect failed.
pub fn connect_result(sock: &mio::net::TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `sock` for the whole call, and the option
    // value points to a c_int that lives across the call, with its exact size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The report key for a socket error.
pub fn classify(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => "reset",
        Some(libc::EMFILE | libc::ENFILE) => "fd_limit",
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => "no_ports",
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable",
        Some(libc::ENOBUFS | libc::ENOMEM) => "no_memory",
        _ => match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused",
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
            io::ErrorKind::TimedOut => "timeout",
            _ => "io_error",
        },
    }
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The ephemeral port range (`net.ipv4.ip_local_port_range`), when readable.
pub fn port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u32>());
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// This process's soft limit on open files.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Sockets one child may hold: the default, or less under a lower open-file limit.
pub fn sockets_per_proc() -> u64 {
    DEFAULT_SOCKETS_PER_PROC.min(nofile_limit().saturating_sub(FD_RESERVE).max(1))
}

/// Warnings about limits for `conns` connections from `sources` source addresses (0:
/// the default source) to one server address.
pub fn preflight(conns: u64, sources: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some((lo, hi)) = port_range() {
        let per_source = u64::from(hi - lo + 1);
        let need = conns.div_ceil(sources.max(1) as u64);
        if need > per_source * 9 / 10 {
            warnings.push(format!(
                "{need} connections per source address but the ephemeral port range \
                 {lo}-{hi} holds {per_source} ports: connects will fail with no_ports. \
                 Widen it (sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\") or add \
                 --sources 127.0.0.2-127.0.0.N"
            ));
        } else if need > per_source / 2 {
            // connect() tries ports of one parity first (the other half is kept for
            // bind()); past half the range every connect scans the used half, taking
            // ~0.4 ms each on this kernel, which shows as a connect-latency tail.
            warnings.push(format!(
                "{need} connections per source address is more than half the ephemeral port \
                 range {lo}-{hi} ({per_source} ports): connects past {} get slow. Widen it \
                 (sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\") or add --sources",
                per_source / 2
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_warns_past_half_the_port_range() {
        let Some((lo, hi)) = port_range() else {
            return;
        };
        let ports = u64::from(hi - lo + 1);
        assert!(preflight(ports / 4, 1).is_empty());
        assert_eq!(preflight(ports * 6 / 10, 1).len(), 1);
        assert!(preflight(ports * 6 / 10, 2).is_empty());
        assert!(preflight(ports * 2, 1)[0].contains("no_ports"));
    }

    #[test]
    fn classifies_errnos() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), "refused");
        assert_eq!(classify(&e(libc::ECONNRESET)), "reset");
        assert_eq!(classify(&e(libc::EMFILE)), "fd_limit");
        assert_eq!(classify(&e(libc::EADDRNOTAVAIL)), "no_ports");
        assert_eq!(classify(&e(libc::ETIMEDOUT)), "timeout");
        assert_eq!(classify(&e(libc::EINVAL)), "io_error");
    }

    #[test]
    fn refused_connect_is_reported() {
        // Bind a port, close it, connect to it: refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let s = connect(addr, Some("127.0.0.1".parse().unwrap())).unwrap();
        let start = std::time::Instant::now();
        loop {
            match connect_result(&s) {
                Err(e) => {
                    assert_eq!(classify(&e), "refused");
                    break;
                }
                Ok(true) => panic!("connected to a closed port"),
                Ok(false) => {}
            }
            assert!(start.elapsed().as_secs() < 5);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
