//! Many WebSocket subscribers read by one thread: for the tests that need thousands of
//! them (a drain under load), where a thread per client would not do.
//!
//! [`Crowd::start`] connects `n` clients to one target and reads them all with one
//! `epoll` loop until [`Crowd::stop`]: each client's data seqs in arrival order, the other
//! messages' types, the close code the server sent, whether the connection ended. Pings
//! are answered, and a server close frame is echoed (masked, as a client must), so the
//! server's close handshake completes. Bounded: every socket and the loop itself stop at
//! [`Crowd::stop`], and the thread gives up after [`CROWD_LIMIT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest a crowd runs, whatever happens.
pub const CROWD_LIMIT: Duration = Duration::from_secs(120);

/// What one client saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Member {
    /// Seqs of the data messages, in arrival order.
    pub seqs: Vec<u64>,
    /// The `type` of every other message.
    pub others: Vec<String>,
    /// The code of the close frame the server sent.
    pub close: Option<u16>,
    /// The connection ended (EOF or error).
    pub ended: bool,
    /// The handshake was answered with 101.
    pub open: bool,
}

/// `n` subscribers on one thread.
pub struct Crowd {
    thread: Option<JoinHandle<Vec<Member>>>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    n: usize,
}

struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    member: Member,
}

fn request(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// `"seq":N` of a data message, or the type of another one.
fn classify(text: &[u8]) -> Result<u64, String> {
    let s = std::str::from_utf8(text).unwrap_or("");
    if s.starts_with(r#"{"type":"data""#) {
        if let Some(i) = s.find(r#""seq":"#) {
            let digits: String = s[i + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                return Ok(n);
            }
        }
    }
    let ty = s
        .strip_prefix(r#"{"type":""#)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?");
    Err(ty.to_string())
}

impl Client {
    /// Parses what is buffered; returns false once the connection is done.
    fn parse(&mut self) -> bool {
        if !self.member.open {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return true;
            };
            if !self.buf.starts_with(b"HTTP/1.1 101") {
                self.member.ended = true;
                return false;
            }
            self.member.open = true;
            self.buf.drain(..end + 4);
        }
        loop {
            if self.buf.len() < 2 {
                return true;
            }
            let opcode = self.buf[0] & 0x0f;
            let (len, head) = match self.buf[1] & 0x7f {
                126 if self.buf.len() >= 4 => {
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 if self.buf.len() >= 10 => {
                    let b: [u8; 8] = self.buf[2..10].try_into().expect("8 bytes");
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => return true,
                n => (n as usize, 2),
            };
            if self.buf.len() < head + len {
                return true;
            }
            let payload: Vec<u8> = self.buf[head..head + len].to_vec();
            self.buf.drain(..head + len);
            match opcode {
                0x1 => match classify(&payload) {
                    Ok(seq) => self.member.seqs.push(seq),
                    Err(ty) => self.member.others.push(ty),
                },
                0x9 => {
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    let _ = self.sock.write(&pong);
                }
                0x8 => {
                    self.member.close = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let code = payload.get(..2).unwrap_or(&[0x03, 0xe8]);
                    let _ = self.sock.write(&[0x88, 0x82, 0, 0, 0, 0, code[0], code[1]]);
                }
                _ => {}
            }
        }
    }
}

impl Crowd {
    /// Connects `n` WebSocket clients to `target` on `addr` and starts reading them.
    pub fn start(addr: SocketAddr, target: &str, n: usize) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (stop2, open2, ended2) = (stop.clone(), open.clone(), ended.clone());
        let req = request(target);
        let thread = thread::Builder::new()
            .name("crowd".into())
            .spawn(move || run(addr, &req, n, &stop2, &open2, &ended2))
            .expect("spawn the crowd thread");
        Crowd {
            thread: Some(thread),
            stop,
            open,
            ended,
            n,
        }
    }

    /// Clients whose handshake was answered.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Clients whose connection ended.
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    /// Waits until every client is connected; false after `timeout`.
    pub fn wait_open(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.open() == self.n)
    }

    /// Waits until every client's connection ended; false after `timeout`.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.ended() == self.n)
    }

    /// Stops reading and returns what each client saw.
    pub fn stop(mut self) -> Vec<Member> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the crowd thread panicked")
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    addr: SocketAddr,
    req: &[u8],
    n: usize,
    stop: &AtomicBool,
    open: &AtomicUsize,
    ended: &AtomicUsize,
) -> Vec<Member> {
    let started = Instant::now();
    // SAFETY: epoll_create1 takes no pointers; the descriptor is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1 failed");
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    for i in 0..n {
        let mut sock = TcpStream::connect(addr).expect("connect a crowd client");
        sock.set_nodelay(true).expect("nodelay");
        sock.write_all(req).expect("send the handshake");
        sock.set_nonblocking(true).expect("nonblocking");
        let fd = sock.as_raw_fd();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` is a valid epoll_event and `fd` an open socket.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(r, 0, "epoll_ctl failed");
        clients.push(Client {
            sock,
            buf: Vec::new(),
            member: Member::default(),
        });
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) && started.elapsed() < CROWD_LIMIT {
        // SAFETY: `events` has room for its length in entries.
        let k = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 20) };
        for ev in events.iter().take(k.max(0) as usize) {
            let i = ev.u64 as usize;
            let c = &mut clients[i];
            if c.member.ended {
                continue;
            }
            let was_open = c.member.open;
            loop {
                match c.sock.read(&mut chunk) {
                    Ok(0) => {
                        c.member.ended = true;
                        break;
                    }
                    Ok(m) => c.buf.extend_from_slice(&chunk[..m]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.member.ended = true;
                        break;
                    }
                }
            }
            if !c.parse() {
                c.member.ended = true;
            }
            if c.member.open && !was_open {
                open.fetch_add(1, Ordering::SeqCst);
            }
            if c.member.ended {
                ended.fetch_add(1, Ordering::SeqCst);
                let fd = c.sock.as_raw_fd();
                // SAFETY: removing a registered descriptor; the event pointer may be null.
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                let _ = c.sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }
    // SAFETY: `ep` is our epoll descriptor, closed once.
    unsafe { libc::close(ep) };
    clients.into_iter().map(|c| c.member).collect()
}
