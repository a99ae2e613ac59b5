//! Keeping connections honest: heartbeats, the pong timeout, slow consumers, the
//! handshake (slowloris) timeout, idle keep-alive, drain and SIGTERM.

use pushedge_tests::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FAST_HEARTBEAT: [&str; 4] = ["--set", "heartbeat_secs=1", "--set", "pong_timeout_secs=1"];

#[test]
fn ws_ping_arrives_within_the_heartbeat_and_pongs_keep_the_peer() {
    let s = Server::start(&FAST_HEARTBEAT);
    let mut ws = s.ws("/ws?channel=hb");
    assert_eq!(
        ws.recv(Duration::from_secs(3)),
        WsEvent::Ping,
        "a ping within the heartbeat"
    );
    // tungstenite answers every ping; over several heartbeat + pong timeout periods the
    // connection stays open.
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pings = 1;
    while Instant::now() < until {
        match ws.recv(until.saturating_duration_since(Instant::now())) {
            WsEvent::Ping => pings += 1,
            WsEvent::Timeout => break,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in ~4 s at a 1 s heartbeat");
    s.publish("hb", "alive");
    assert_eq!(ws.recv_json()["content"], "alive");
    assert_eq!(s.metric("pushedge_heartbeat_timeouts_total"), 0.0);
}

#[test]
fn sse_heartbeat_is_a_ping_comment() {
    let s = Server::start(&["--set", "heartbeat_secs=1"]);
    let mut sse = s.sse("/sse?channel=hb");
    let mut blocks = Vec::new();
    let found = (0..4).any(|_| match sse.next_block(Duration::from_secs(3)) {
        Ok(b) => {
            let is_ping = b.comments == ["ping"] && b.data.is_none() && b.id.is_none();
            blocks.push(b);
            is_ping
        }
        Err(e) => panic!("{e:?} after {blocks:?}"),
    });
    assert!(found, "no `: ping` comment: {blocks:?}");
}

#[test]
fn stream_and_iframe_heartbeat_is_noop() {
    let s = Server::start(&["--set", "heartbeat_secs=1"]);
    let mut st = s.stream("/stream?channel=hb");
    let mut fr = s.iframe("/iframe?channel=hb&cb=f");
    assert_eq!(
        st.next(Duration::from_secs(3)).unwrap(),
        json!({"type": "noop"})
    );
    let (cb, v) = fr.next(Duration::from_secs(3)).unwrap();
    assert_eq!((cb.as_str(), v), ("f", json!({"type": "noop"})));
    // Still live after the heartbeat.
    s.publish("hb", "x");
    assert_eq!(st.expect()["content"], "x");
}

#[test]
fn a_peer_that_never_answers_pings_is_closed() {
    let s = Server::start(&FAST_HEARTBEAT);
    let mut raw = RawWs::connect(s.addr, "/ws?channel=silent");
    let first = raw.read_frame(Duration::from_secs(3)).expect("a frame");
    assert_eq!(first.opcode, op::PING, "{first:?}");
    // Never answer: closed after heartbeat + pong timeout.
    let end = raw.recv_close(Duration::from_secs(4));
    assert_eq!(
        end.map(|c| c.0),
        Some(1008),
        "close code for a heartbeat timeout"
    );
    assert!(raw.conn.closed_within(TIMEOUT));
    assert!(wait_until(TIMEOUT, || s
        .metric("pushedge_heartbeat_timeouts_total")
        == 1.0));
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));
}

#[test]
fn a_raw_peer_answering_pings_stays_open() {
    let s = Server::start(&FAST_HEARTBEAT);
    let mut raw = RawWs::connect(s.addr, "/ws?channel=polite");
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while Instant::now() < until {
        match raw.read_frame(until.saturating_duration_since(Instant::now())) {
            Ok(f) if f.opcode == op::PING => {
                pings += 1;
                raw.send_frame(true, 0, op::PONG, true, &f.payload);
            }
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(ReadError::Timeout) => break,
            Err(e) => panic!("closed after {pings} pings: {e:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings");
    s.publish("polite", "still here");
    assert_eq!(raw.recv_json(TIMEOUT)["content"], "still here");
}

/// A server with two WebSocket subscribers on `flood`: one that stopped reading, one that
/// keeps up; large messages are published until the slow one is closed.
struct Flood {
    s: Server,
    slow: RawWs,
    published: u64,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<u64>>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        // The server goes away next: the reader thread must not take that for a failure.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn flood_until_a_slow_consumer_close() -> Flood {
    let s = Server::start(&["--set", "slow_consumer_bytes=65536"]);
    let slow = RawWs::connect(s.addr, "/ws?channel=flood");
    let mut fast = s.ws("/ws?channel=flood");
    s.wait_subscribers("flood", 2);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            loop {
                match fast.recv(Duration::from_millis(200)) {
                    WsEvent::Json(v) => {
                        let seq = v["seq"].as_u64().unwrap();
                        assert_eq!(seq, last + 1, "the fast reader gets every message in order");
                        last = seq;
                        received.store(seq, Ordering::SeqCst);
                    }
                    WsEvent::Ping => {}
                    _ if stop.load(Ordering::SeqCst) => return last,
                    WsEvent::Timeout => {}
                    other => panic!("the fast reader was closed: {other:?}"),
                }
            }
        })
    };
    let body = "z".repeat(60_000);
    let mut published = 0;
    let tripped = wait_for(Duration::from_secs(30), || {
        for _ in 0..10 {
            published = s.publish("flood", &body);
        }
        // Let the fast reader keep up, so only the one that stopped reading falls behind.
        assert!(
            wait_until(TIMEOUT, || received.load(Ordering::SeqCst) == published),
            "the fast reader fell behind"
        );
        (s.metric("pushedge_slow_consumer_closes_total") >= 1.0).then_some(())
    });
    assert!(
        tripped.is_some(),
        "no slow-consumer close after {published} messages"
    );
    Flood {
        s,
        slow,
        published,
        received,
        stop,
        reader: Some(reader),
    }
}

#[test]
fn a_slow_consumer_is_closed_and_others_get_everything() {
    let mut f = flood_until_a_slow_consumer_close();
    let s = &f.s;
    assert_eq!(s.metric("pushedge_slow_consumer_closes_total"), 1.0);
    s.wait_subscribers("flood", 1);
    // The slow client's connection ends once it reads what was sent.
    let rest = f.slow.conn.read_to_eof(TIMEOUT);
    assert!(rest.is_ok(), "the slow consumer was not closed: {rest:?}");
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 1));
    // The fast reader is untouched and still subscribed.
    let last = s.publish("flood", "after");
    assert!(wait_until(TIMEOUT, || f.received.load(Ordering::SeqCst) == last));
    f.stop.store(true, Ordering::SeqCst);
    let reader = f.reader.take().expect("the reader thread");
    assert_eq!(
        reader.join().expect("the fast reader did not fail"),
        f.published + 1
    );
}

/// What a slow consumer receives before it is closed is well-formed: whole frames in seq
/// order, then a close frame 1008.
#[test]
fn a_slow_consumer_gets_whole_frames_then_close_1008() {
    let mut f = flood_until_a_slow_consumer_close();
    let mut last = 0;
    let end = loop {
        match f.slow.read_frame(TIMEOUT) {
            Ok(fr) if fr.opcode == op::TEXT => {
                let v: Value = serde_json::from_slice(&fr.payload).expect("whole frames");
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
            }
            Ok(fr) if fr.opcode == op::PING => {}
            Ok(fr) if fr.opcode == op::CLOSE => break fr.close_code(),
            Ok(fr) => panic!("unexpected frame {fr:?}"),
            Err(e) => {
                let b = f.slow.conn.buffered();
                panic!(
                    "{e:?} after seq {last} with {} bytes of an unfinished frame, ending {:?}",
                    b.len(),
                    String::from_utf8_lossy(&b[b.len().saturating_sub(24)..])
                );
            }
        }
    };
    assert_eq!(end.map(|(code, _)| code), Some(1008));
    assert!(last < f.published, "the slow consumer was cut off");
    f.stop.store(true, Ordering::SeqCst);
}

#[test]
fn handshake_timeout_closes_slowloris_connections() {
    let s = Server::start(&["--set", "handshake_timeout_secs=1"]);
    let mut ws = s.ws("/ws?channel=ok");
    // A partial head, never finished.
    let mut partial = s.connect();
    partial
        .send(b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A head trickled one byte at a time: the deadline is not reset by progress.
    let mut trickle = s.connect();
    let head = b"GET /sse?channel=a HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut silent = s.connect();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut trickle_closed = false;
    for b in head.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        if trickle.send(&[*b]).is_err() {
            trickle_closed = true;
            break;
        }
        match trickle.fill(Instant::now() + Duration::from_millis(100)) {
            Err(ReadError::Closed) => {
                trickle_closed = true;
                break;
            }
            Err(ReadError::Timeout) => {}
            Ok(_) => {
                // A started head is answered 408 before the close.
                let r = trickle.read_response(TIMEOUT).unwrap();
                assert_eq!(r.status, 408, "{}", r.text());
                assert_eq!(trickle.read_to_eof(TIMEOUT), Ok(Vec::new()));
                trickle_closed = true;
                break;
            }
            other => panic!("unexpected answer to a partial head: {other:?}"),
        }
    }
    assert!(
        trickle_closed,
        "a trickled head outlived the handshake timeout"
    );
    let r = partial.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 408, "partial: {}", r.text());
    assert_eq!(
        partial.read_to_eof(TIMEOUT),
        Ok(Vec::new()),
        "partial: closed"
    );
    let rest = silent.read_to_eof(TIMEOUT);
    assert_eq!(rest, Ok(Vec::new()), "silent: closed without an answer");
    assert!(s.metric("pushedge_handshake_timeouts_total") >= 3.0);
    // An established WebSocket is not subject to it.
    s.publish("ok", "fine");
    assert_eq!(ws.recv_json()["content"], "fine");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let s = Server::start(&["--set", "idle_timeout_secs=1"]);
    let mut c = s.connect();
    c.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(c.read_response(TIMEOUT).unwrap().status, 200);
    assert_eq!(c.fill(Instant::now() + QUIET), Err(ReadError::Timeout));
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn drain_closes_subscribers_gracefully_and_refuses_new_connections() {
    let s = Server::start(&[]);
    s.publish("d", "m1");
    let mut ws = s.ws("/ws?channel=d");
    let mut sse = s.sse("/sse?channel=d");
    let mut st = s.stream("/stream?channel=d");
    let mut fr = s.iframe("/iframe?channel=d");
    let mut poll = s.connect();
    poll.send_request("GET", "/poll?channel=d&seq=2", &[], b"", false);
    s.wait_subscribers("d", 5);
    let v = s.ctl().cmd("drain");
    assert_eq!(v["type"], "ok");
    assert_eq!(v["draining"], true);
    assert_eq!(ws.recv_close(TIMEOUT), Some(1001));
    assert!(sse.conn.closed_within(TIMEOUT), "SSE ends");
    assert_eq!(st.next(TIMEOUT), Err(ReadError::Closed));
    assert!(st.ended(), "the NDJSON stream ends with its last chunk");
    assert!(st.conn.closed_within(TIMEOUT));
    assert_eq!(fr.next(TIMEOUT), Err(ReadError::Closed));
    let r = poll.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["type"], "noop");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "no keep-alive while draining"
    );
    drop(ws);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));
    assert_eq!(s.info()["draining"], true);
    // New connections are refused (or answered 503 and closed), never served.
    for _ in 0..4 {
        let Ok(mut c) = Conn::try_connect(s.addr) else {
            continue;
        };
        let _ = c.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n");
        match c.read_response(TIMEOUT) {
            Ok(r) => assert_eq!(r.status, 503, "served during drain: {r:?}"),
            Err(e) => assert_eq!(e, ReadError::Closed),
        }
    }
    // The admin port keeps working.
    assert_eq!(s.admin_get("/info").status, 200);
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=t");
    let mut st = s.stream("/stream?channel=t");
    s.wait_subscribers("t", 2);
    s.signal(libc::SIGTERM);
    assert_eq!(ws.recv_close(TIMEOUT), Some(1001));
    drop(ws);
    assert_eq!(st.next(TIMEOUT), Err(ReadError::Closed));
    assert!(st.ended());
    drop(st);
    let status = s.wait_exit(TIMEOUT * 2).expect("exits after draining");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("draining"), "{}", s.log());
}

#[test]
fn sigterm_exits_after_drain_timeout_when_a_peer_lingers() {
    let mut s = Server::start(&[
        "--set",
        "drain_timeout_secs=1",
        "--set",
        "close_timeout_secs=5",
    ]);
    // A raw peer that never answers the close frame nor closes.
    let _raw = RawWs::connect(s.addr, "/ws?channel=t");
    s.wait_subscribers("t", 1);
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(TIMEOUT).expect("exits at the drain timeout");
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

/// Connects while the server is full and returns the raw answer, head and body.
fn full_answer(s: &Server) -> (String, String) {
    // Send nothing: the answer comes at accept, and no unread request turns the close into
    // a reset.
    let mut c = s.connect();
    let raw = c.read_to_eof(TIMEOUT).expect("answered and closed");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    (head.to_string(), body.to_string())
}

#[test]
fn max_connections_refuses_with_503_and_is_live() {
    let s = Server::start(&["--set", "max_connections=2"]);
    let _a = s.ws("/ws?channel=m");
    let _b = s.ws("/ws?channel=m");
    s.wait_subscribers("m", 2);
    let (head, body) = full_answer(&s);
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("a JSON body");
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(503)),
        "{v}"
    );
    assert_eq!(
        s.metric("pushedge_connections_rejected_total{reason=\"max_connections\"}"),
        1.0
    );
    // Raised live, a new connection is served.
    assert_eq!(s.ctl().cmd("config set max_connections 3")["value"], 3);
    let _c = s.ws("/ws?channel=m");
    s.wait_subscribers("m", 3);
}

/// The 503 sent at `max_connections` is a well-formed response.
#[test]
fn max_connections_503_has_a_correct_content_length() {
    let s = Server::start(&["--set", "max_connections=1"]);
    let _a = s.ws("/ws?channel=m");
    s.wait_subscribers("m", 1);
    let (head, body) = full_answer(&s);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .expect("a Content-Length");
    assert_eq!(body.len(), len, "body {body:?}");
}
