//! The worker driven turn by turn from the test thread, with real sockets.

use super::accept::{DRAINING_RESPONSE, FULL_RESPONSE, PER_IP_RESPONSE};
use super::*;
use crate::config::{Config, Live};
use crate::conn::Conn;
use crate::hub::Hub;
use crate::reactor::bind_reuseport;
use crate::reactor::epoll::Epoll;
use protocol::ws;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

#[test]
fn canned_responses_are_well_formed() {
    for canned in [&FULL_RESPONSE, &PER_IP_RESPONSE, &DRAINING_RESPONSE] {
        let text = std::str::from_utf8(canned).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        assert!(head.starts_with("HTTP/1.1 503 "));
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        assert_eq!(v["code"], 503);
    }
}

/// One worker driven turn by turn from the test thread, with real sockets.
struct Rig {
    worker: Worker<Epoll>,
    hub: Arc<Hub>,
    addr: SocketAddr,
}

impl Rig {
    fn new(mut cfg: Config) -> Rig {
        // The server resolves an automatic budget at start; the rig fixes one.
        if cfg.max_connections == 0 {
            cfg.max_connections = 1024;
        }
        let live = Arc::new(Live::new(&cfg));
        let io = Epoll::new().unwrap();
        let inbox = Arc::new(Inbox::new(io.waker()));
        let hub = Arc::new(Hub::new(
            vec![inbox.clone()],
            crate::hub::HubConfig::from_config(&cfg, live.clone(), false),
            None,
        ));
        let shared = Arc::new(Shared::new(
            cfg,
            live,
            hub.clone(),
            vec![inbox.clone()],
            "test".into(),
            None,
        ));
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let worker = Worker::new(0, shared, io, vec![(0, listener)], inbox).unwrap();
        Rig { worker, hub, addr }
    }

    fn turn(&mut self) {
        self.worker.turn(Some(Duration::from_millis(5)));
    }

    /// Turns until `f` holds (at most 2 s).
    fn until(&mut self, f: impl Fn(&Worker<Epoll>) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            self.turn();
            if f(&self.worker) {
                return true;
            }
        }
        false
    }

    fn connect(&mut self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_nonblocking(true).unwrap();
        self.until(|w| !w.core.conns.is_empty());
        s
    }

    /// Turns until the client has read something (at most 2 s).
    fn read(&mut self, s: &mut TcpStream) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            self.turn();
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // Give the server a turn to finish a response in pieces.
                    self.turn();
                    if let Ok(n) = s.read(&mut buf) {
                        out.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
                Err(_) => {}
            }
        }
        out
    }

    fn only(&self) -> &Conn {
        self.worker
            .core
            .conns
            .iter()
            .next()
            .expect("one connection")
            .1
    }
}

const UPGRADE: &str = "GET /ws?channel=c HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn keep_alive_request_returns_to_waiting_for_a_head() {
    let mut rig = Rig::new(Config::default());
    let mut c = rig.connect();
    assert_eq!(rig.only().state(), State::Http);
    assert!(!rig.only().timer.is_none(), "handshake deadline armed");
    c.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let resp = rig.read(&mut c);
    assert!(resp.starts_with(b"HTTP/1.1 200 OK"));
    let conn = rig.only();
    assert_eq!(conn.state(), State::Http);
    assert!(conn.has(flag::SERVED) && conn.has(flag::KEEP_ALIVE));
    assert!(!conn.timer.is_none(), "idle deadline armed");
    assert!(conn.ext.is_none(), "an idle connection holds no buffers");
}

#[test]
fn websocket_upgrade_subscribe_and_close_handshake() {
    let mut rig = Rig::new(Config::default());
    let mut c = rig.connect();
    c.write_all(UPGRADE.as_bytes()).unwrap();
    let resp = rig.read(&mut c);
    assert!(
        resp.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    let conn = rig.only();
    assert_eq!(conn.state(), State::Ws);
    assert_eq!(conn.subs.len(), 1);
    assert!(conn.ext.is_none() && conn.ws.is_idle());
    assert_eq!(rig.hub.info("c").unwrap().subscribers, 1);
    // A masked close frame: the server answers with close and shuts its side.
    let mut frame = Vec::new();
    ws::encode_close(&mut frame, CloseCode::NORMAL, "bye", Some([1, 2, 3, 4]));
    c.write_all(&frame).unwrap();
    let reply = rig.read(&mut c);
    assert_eq!(reply[0], 0x88, "close frame back");
    assert!(rig.until(|w| w
        .core
        .conns
        .iter()
        .all(|(_, c)| c.state() == State::Closing)));
    assert!(
        rig.hub.info("c").is_none(),
        "unsubscribed on close, and the empty channel freed"
    );
    drop(c);
    assert!(
        rig.until(|w| w.core.conns.is_empty()),
        "peer EOF frees the slot"
    );
}

#[test]
fn a_partial_head_is_cut_at_the_handshake_deadline() {
    let cfg = Config {
        handshake_timeout_secs: 0.1,
        close_timeout_secs: 0.1,
        ..Default::default()
    };
    let mut rig = Rig::new(cfg);
    let mut c = rig.connect();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost:").unwrap();
    assert!(rig.until(|w| w
        .core
        .conns
        .iter()
        .any(|(_, c)| c.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty()))));
    let resp = rig.read(&mut c);
    assert!(resp.starts_with(b"HTTP/1.1 408"), "answered 408");
    assert!(rig.until(|w| w.core.conns.is_empty()));
    assert_eq!(rig.worker.core.stats.get(Counter::HandshakeTimeout), 1);
}

#[test]
fn a_held_poll_is_answered_by_a_publish_and_kept_alive() {
    let mut rig = Rig::new(Config::default());
    let mut c = rig.connect();
    c.write_all(b"GET /poll?channel=p&seq=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(rig.until(|w| w.core.conns.iter().all(|(_, c)| c.state() == State::Poll)));
    assert_eq!(rig.only().subs.len(), 1);
    rig.hub
        .publish("p", "hello", &crate::hub::PubMeta::default())
        .unwrap();
    let resp = rig.read(&mut c);
    let text = String::from_utf8_lossy(&resp);
    let epoch = rig.hub.info("p").unwrap().epoch;
    let want = format!(r#""seq":1,"epoch":"{epoch}","content":"hello""#);
    assert!(text.contains(&want), "{text}");
    let conn = rig.only();
    assert_eq!(conn.state(), State::Http);
    assert!(
        conn.subs.is_empty(),
        "an answered poll leaves no subscription"
    );
    assert_eq!(rig.hub.info("p").unwrap().subscribers, 0);
}
