//! `floor reader`: holds the client sockets of one sender and times each round.
//!
//! The same code reads both senders: one thread, one level-triggered epoll set, one
//! `read` into a stack buffer per readable socket. For each round (a `go` line on stdin)
//! it takes the time, writes the trigger (a byte to the bare sender's control socket, or
//! the `POST /pub` on a kept-alive admin connection), and waits until every socket has
//! received one whole WebSocket frame; it answers on stdout with
//! `done last_us=.. first_us=.. ctl_us=.. frame=.. stray=..` (microseconds from the
//! trigger's write to the last / first complete frame and to the trigger's answer).

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::sys;
use crate::{arg_num, arg_str, Args, Res};

/// The token of the control (or admin) connection in the epoll set.
const CTL: u64 = u64::MAX;
/// WebSocket sockets connected and upgraded before their answers are read.
const WS_BATCH: usize = 200;
/// The fixed key of every upgrade; pushedge's answer is not checked beyond its status.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The bare sender: plain TCP, a control connection first.
    Bare,
    /// pushedge: WebSocket subscribers, publishes on the admin port.
    Ws,
}

/// One client socket and its progress through the current round's frame.
struct Sock {
    stream: TcpStream,
    /// Bytes received this round.
    got: u32,
    /// Header + payload length of the frame, once its header is in (0: not yet).
    need: u32,
    /// The frame's first bytes (a header is at most 4 bytes here).
    hdr: [u8; 4],
}

/// What a chunk of input did to a socket's round.
enum Fed {
    /// The frame is not complete yet.
    More,
    /// The frame completed with this chunk; `stray` bytes came after it.
    Done { stray: u32 },
    /// The frame had completed before: all of the chunk is stray.
    After,
}

impl Sock {
    fn new(stream: TcpStream) -> Sock {
        Sock {
            stream,
            got: 0,
            need: 0,
            hdr: [0; 4],
        }
    }

    fn reset(&mut self) {
        self.got = 0;
        self.need = 0;
    }

    fn done(&self) -> bool {
        self.need != 0 && self.got >= self.need
    }

    fn feed(&mut self, data: &[u8]) -> Res<Fed> {
        if self.done() {
            self.got += data.len() as u32;
            return Ok(Fed::After);
        }
        for (i, &b) in data.iter().enumerate() {
            let at = self.got as usize + i;
            if at >= self.hdr.len() {
                break;
            }
            self.hdr[at] = b;
        }
        self.got += data.len() as u32;
        if self.need == 0 && self.got >= 2 {
            if self.hdr[0] != 0x81 {
                return Err(format!(
                    "expected an unfragmented text frame (0x81), got first byte {:#04x}",
                    self.hdr[0]
                ));
            }
            if self.hdr[1] & 0x80 != 0 {
                return Err("a server frame is masked".into());
            }
            match self.hdr[1] & 0x7f {
                n @ 0..=125 => self.need = 2 + u32::from(n),
                126 if self.got >= 4 => {
                    self.need = 4 + u32::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]]))
                }
                126 => {}
                _ => return Err("a frame with a 64-bit length".into()),
            }
        }
        if self.done() {
            Ok(Fed::Done {
                stray: self.got - self.need,
            })
        } else {
            Ok(Fed::More)
        }
    }
}

/// The answer to the round's trigger: the bare sender's one byte, or pushedge's HTTP
/// reply to the publish.
struct Ctl {
    buf: Vec<u8>,
    complete: bool,
    /// The peer closed (or will close) the admin connection after this answer.
    closing: bool,
}

impl Ctl {
    fn new() -> Ctl {
        Ctl {
            buf: Vec::with_capacity(512),
            complete: false,
            closing: false,
        }
    }

    /// Takes in what the control connection delivered (`None`: end of stream).
    fn feed(&mut self, mode: Mode, data: Option<&[u8]>) -> Res<()> {
        let Some(data) = data else {
            if self.complete {
                self.closing = true;
                return Ok(());
            }
            return Err("the control connection closed mid-round".into());
        };
        if self.complete {
            return Err(format!(
                "{} unexpected bytes on the control connection",
                data.len()
            ));
        }
        self.buf.extend_from_slice(data);
        match mode {
            Mode::Bare => match self.buf.as_slice() {
                b"k" => self.complete = true,
                b"e" => return Err("the sender failed to write every frame".into()),
                other => return Err(format!("the sender answered {other:?}")),
            },
            Mode::Ws => {
                let Some(head_end) = find(&self.buf, b"\r\n\r\n") else {
                    return Ok(());
                };
                let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
                let mut len = 0usize;
                for line in head.lines().skip(1) {
                    if let Some(v) = line.strip_prefix("content-length:") {
                        len = v
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad Content-Length in {head:?}"))?;
                    }
                    if line.starts_with("connection:") && line.contains("close") {
                        self.closing = true;
                    }
                }
                if self.buf.len() < head_end + 4 + len {
                    return Ok(());
                }
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "the publish was answered {}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                if self.buf.len() > head_end + 4 + len {
                    return Err("bytes after the publish's answer".into());
                }
                self.complete = true;
            }
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Reader {
    mode: Mode,
    socks: Vec<Sock>,
    ctl: TcpStream,
    epoll: sys::Epoll,
    /// The admin address (WebSocket mode), to reconnect when pushedge closes it.
    admin: Option<SocketAddr>,
    /// The trigger: one byte, or the whole publish request.
    trigger: Vec<u8>,
    round_timeout: Duration,
}

/// `floor reader --mode bare|ws --addr HOST:PORT --conns N [--admin HOST:PORT]
/// [--channel C] [--body TEXT] [--round-timeout-ms MS]`
pub fn main(args: &Args) -> Res<()> {
    let mode = match arg_str(args, "--mode", "bare").as_str() {
        "bare" => Mode::Bare,
        "ws" => Mode::Ws,
        m => return Err(format!("--mode {m}: expected bare or ws")),
    };
    let addr: SocketAddr = arg_str(args, "--addr", "")
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let conns: usize = arg_num(args, "--conns", 15_000)?;
    let channel = arg_str(args, "--channel", "floor");
    let body = arg_str(args, "--body", "floor");
    let round_timeout = Duration::from_millis(arg_num(args, "--round-timeout-ms", 20_000)?);

    let started = Instant::now();
    let (ctl, socks, admin, trigger) = match mode {
        Mode::Bare => {
            // The control connection first: the sender takes its first accepted
            // connection as the control one and checks the hello byte.
            let mut ctl = connect(addr)?;
            ctl.write_all(b"c")
                .map_err(|e| format!("control hello: {e}"))?;
            let socks = connect_all(addr, conns, None, Some(&ctl))?;
            (ctl, socks, None, b"g".to_vec())
        }
        Mode::Ws => {
            let admin: SocketAddr = arg_str(args, "--admin", "")
                .parse()
                .map_err(|e| format!("--admin: {e}"))?;
            let upgrade = format!(
                "GET /ws?channel={channel} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            let socks = connect_all(addr, conns, Some(upgrade.as_bytes()), None)?;
            // The admin connection last, so that it has not idled while the subscribers
            // connected.
            let ctl = connect(admin)?;
            let publish = format!(
                "POST /pub?channel={channel} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            (ctl, socks, Some(admin), publish.into_bytes())
        }
    };
    let epoll = sys::Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    for (i, s) in socks.iter().enumerate() {
        s.stream
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        epoll
            .add(s.stream.as_raw_fd(), i as u64)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
    }
    let mut r = Reader {
        mode,
        socks,
        ctl,
        epoll,
        admin,
        trigger,
        round_timeout,
    };
    r.watch_ctl()?;
    say(&format!(
        "ready conns={} connect_ms={}",
        r.socks.len(),
        started.elapsed().as_millis()
    ))?;

    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        match line.trim() {
            "go" => {
                let res = r.round()?;
                say(&res)?;
            }
            "" => {}
            other => return Err(format!("unknown command {other:?}")),
        }
    }
    Ok(())
}

fn say(line: &str) -> Res<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

fn connect(addr: SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(s)
}

/// Opens `n` connections to `addr` in batches, each batch answered before the next
/// starts (so that no accept queue overflows into SYN retransmits): with `upgrade` (to
/// pushedge), sends it on each and reads the `101` answer (up to its blank line, and
/// nothing more may have come); with `ctl` (the bare sender), waits for the sender's `a`
/// there, which it writes after each `sender::ACCEPT_BATCH` accepted connections.
fn connect_all(
    addr: SocketAddr,
    n: usize,
    upgrade: Option<&[u8]>,
    ctl: Option<&TcpStream>,
) -> Res<Vec<Sock>> {
    let mut socks = Vec::with_capacity(n);
    let mut buf = [0u8; 1024];
    let batch = if upgrade.is_some() {
        WS_BATCH
    } else {
        crate::sender::ACCEPT_BATCH
    };
    while socks.len() < n {
        let from = socks.len();
        for _ in 0..batch.min(n - from) {
            let s = TcpStream::connect(addr)
                .map_err(|e| format!("connect {addr} (connection {}): {e}", socks.len()))?;
            if let Some(req) = upgrade {
                (&s).write_all(req)
                    .map_err(|e| format!("upgrade request: {e}"))?;
            }
            socks.push(Sock::new(s));
        }
        if let Some(mut ctl) = ctl {
            let mut a = [0u8; 1];
            ctl.read_exact(&mut a)
                .map_err(|e| format!("sender's accept answer: {e}"))?;
            if &a != b"a" {
                return Err(format!("the sender answered {a:?} while accepting"));
            }
        }
        if upgrade.is_none() {
            continue;
        }
        for (i, s) in socks[from..].iter().enumerate() {
            s.stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
            let mut len = 0;
            let end = loop {
                let k = (&s.stream)
                    .read(&mut buf[len..])
                    .map_err(|e| format!("upgrade answer (connection {}): {e}", from + i))?;
                if k == 0 {
                    return Err(format!(
                        "connection {} closed during the upgrade: {:?}",
                        from + i,
                        String::from_utf8_lossy(&buf[..len])
                    ));
                }
                len += k;
                if let Some(p) = find(&buf[..len], b"\r\n\r\n") {
                    break p + 4;
                }
                if len == buf.len() {
                    return Err("an upgrade answer of more than 1 KiB".into());
                }
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(format!(
                    "the upgrade was answered {:?}",
                    String::from_utf8_lossy(&buf[..len])
                ));
            }
            if len > end {
                return Err(format!(
                    "{} bytes came right after the 101 answer",
                    len - end
                ));
            }
            s.stream
                .set_read_timeout(None)
                .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        }
    }
    Ok(socks)
}

impl Reader {
    fn watch_ctl(&self) -> Res<()> {
        self.ctl
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        self.epoll
            .add(self.ctl.as_raw_fd(), CTL)
            .map_err(|e| format!("epoll_ctl: {e}"))
    }

    /// One round: trigger, read every socket's frame, check that nothing else came.
    fn round(&mut self) -> Res<String> {
        for s in &mut self.socks {
            s.reset();
        }
        let n = self.socks.len();
        let mut events = [sys::NO_EVENT; 1024];
        let mut buf = [0u8; 4096];
        let mut done = 0usize;
        let mut stray = 0u64;
        let mut first = None;
        let mut last = None;
        let mut ctl_at = None;
        let mut ctl = Ctl::new();

        let t0 = Instant::now();
        (&self.ctl)
            .write_all(&self.trigger)
            .map_err(|e| format!("trigger write: {e}"))?;
        let deadline = t0 + self.round_timeout;
        while done < n || !ctl.complete {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "round timed out after {:?}: {done} of {n} frames complete, trigger answered: {}",
                    self.round_timeout, ctl.complete
                ));
            }
            let k = self
                .epoll
                .wait(&mut events, left.as_millis().clamp(1, 1000) as i32)
                .map_err(|e| format!("epoll_wait: {e}"))?;
            for ev in &events[..k] {
                let tok = sys::token(ev);
                if tok == CTL {
                    match (&self.ctl).read(&mut buf) {
                        Ok(0) => ctl.feed(self.mode, None)?,
                        Ok(m) => ctl.feed(self.mode, Some(&buf[..m]))?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(format!("control read: {e}")),
                    }
                    if ctl.complete && ctl_at.is_none() {
                        ctl_at = Some(Instant::now());
                    }
                    if ctl.closing {
                        break;
                    }
                    continue;
                }
                let i = tok as usize;
                let s = &mut self.socks[i];
                let m = match (&s.stream).read(&mut buf) {
                    Ok(0) => return Err(format!("connection {i} closed by the sender")),
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(format!("read (connection {i}): {e}")),
                };
                match s
                    .feed(&buf[..m])
                    .map_err(|e| format!("connection {i}: {e}"))?
                {
                    Fed::More => {}
                    Fed::After => stray += m as u64,
                    Fed::Done { stray: extra } => {
                        stray += u64::from(extra);
                        done += 1;
                        if done == 1 {
                            first = Some(Instant::now());
                        }
                        if done == n {
                            last = Some(Instant::now());
                        }
                    }
                }
            }
            if ctl.closing {
                self.reconnect_ctl()?;
                ctl.closing = false;
            }
        }
        let frame = self.socks.first().map_or(0, |s| s.need);
        stray += self.drain(&mut buf)?;
        let us = |t: Option<Instant>| t.map_or(0, |t| t.duration_since(t0).as_micros());
        Ok(format!(
            "done last_us={} first_us={} ctl_us={} frame={frame} stray={stray}",
            us(last),
            us(first),
            us(ctl_at)
        ))
    }

    /// Reads whatever is still readable once a round is complete (nothing should be):
    /// the next round starts on empty sockets. Returns the bytes found.
    fn drain(&mut self, buf: &mut [u8]) -> Res<u64> {
        let mut events = [sys::NO_EVENT; 256];
        let mut stray = 0u64;
        loop {
            let k = self
                .epoll
                .wait(&mut events, 0)
                .map_err(|e| format!("epoll_wait: {e}"))?;
            if k == 0 {
                return Ok(stray);
            }
            for ev in &events[..k] {
                let tok = sys::token(ev);
                let r = if tok == CTL {
                    (&self.ctl).read(buf)
                } else {
                    (&self.socks[tok as usize].stream).read(buf)
                };
                match r {
                    Ok(0) if tok == CTL => self.reconnect_ctl()?,
                    Ok(0) => return Err(format!("connection {tok} closed by the sender")),
                    Ok(m) => stray += m as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("drain read: {e}")),
                }
            }
        }
    }

    /// pushedge closed the kept-alive admin connection: open another (between rounds,
    /// outside any timing). The bare sender never closes its control connection.
    fn reconnect_ctl(&mut self) -> Res<()> {
        let Some(admin) = self.admin else {
            return Err("the sender closed the control connection".into());
        };
        self.ctl = connect(admin)?;
        self.watch_ctl()
    }
}
