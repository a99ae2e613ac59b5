//! Hot handover (`ctl upgrade`): the successor takes the listeners and every connection
//! over; a successor that fails leaves the old process serving.

use pushedge_tests::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(15);

/// A raw WebSocket on `/ws?channel=...` through the harness's plain connection.
fn raw_ws(s: &Server, target: &str) -> Conn {
    let mut c = s.connect();
    c.send(RawWs::handshake_request(target, "13").as_bytes())
        .expect("handshake");
    let head = c.read_head(TIMEOUT).expect("101");
    assert_eq!(head.status, 101);
    c
}

/// Reads one small unmasked text frame.
fn read_text(c: &mut Conn) -> Value {
    let h = c.take_exact(2, LONG).expect("frame header");
    assert_eq!(h[0], 0x81, "a final text frame");
    let len = usize::from(h[1] & 0x7f);
    assert!(len < 126, "small frame");
    let body = c.take_exact(len, LONG).expect("frame payload");
    serde_json::from_slice(&body).expect("JSON")
}

/// A ping op cut in the middle of its payload: (first part, rest).
fn half_frame() -> (Vec<u8>, Vec<u8>) {
    let frame = encode_frame(
        true,
        0,
        op::TEXT,
        Some([1, 2, 3, 4]),
        br#"{"op":"ping","id":7}"#,
    );
    let cut = frame.len() / 2;
    (frame[..cut].to_vec(), frame[cut..].to_vec())
}

/// Publishes `n`, `n+1`, ... to `channel` every few ms until `stop`, each on its own
/// admin connection (so a connection the old process never read is just retried with
/// the next number); returns the numbers acknowledged with 200.
fn publisher(
    admin: std::net::SocketAddr,
    channel: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let Ok(mut c) = Conn::try_connect(admin) else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.send_request(
                "POST",
                &format!("/pub?channel={channel}"),
                &[],
                n.to_string().as_bytes(),
                true,
            );
            if let Ok(r) = c.read_response(LONG) {
                if r.status == 200 {
                    acked.push(n);
                }
            }
            thread::sleep(Duration::from_millis(3));
        }
        acked
    })
}

/// Checks what a subscriber got: strictly increasing (no duplicate, in order), every
/// acknowledged number present.
fn check(who: &str, got: &[u64], acked: &[u64]) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order or duplicated: {got:?}"
    );
    let missing: Vec<u64> = acked
        .iter()
        .filter(|n| got.binary_search(n).is_err())
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: lost {missing:?} of {}",
        acked.len()
    );
}

fn content_number(v: &Value) -> Option<u64> {
    v["content"].as_str().and_then(|c| c.parse().ok())
}

#[test]
fn every_connection_is_handed_over_with_publishes_running() {
    let s = Server::start(&[]);
    let old = s.pid();
    let mut ws = s.ws("/ws?channel=live");
    let mut sse = s.sse("/sse?channel=live");
    let mut ndjson = s.stream("/stream?channel=live");
    let mut iframe = s.iframe("/iframe?channel=live");
    let mut held = s.connect();
    held.send_request("GET", "/poll?channel=quiet&seq=1", &[], b"", false);
    let mut half = raw_ws(&s, "/ws?channel=other");
    s.wait_subscribers("live", 4);
    s.wait_subscribers("quiet", 1);
    let (first, rest) = half_frame();
    half.send(&first).unwrap();

    // A long-poll client following "live" through the upgrade.
    let addr = s.addr;
    let poller = thread::spawn(move || {
        let mut got = Vec::new();
        let mut seq = 1;
        loop {
            let mut c = Conn::connect(addr);
            c.send_request(
                "GET",
                &format!("/poll?channel=live&seq={seq}"),
                &[],
                b"",
                true,
            );
            let r = c.read_response(LONG).expect("a poll answer");
            assert_eq!(r.status, 200, "{}", r.text());
            for m in r.json().as_array().expect("an array") {
                if m["type"] != "data" {
                    continue;
                }
                seq = m["seq"].as_u64().unwrap() + 1;
                match content_number(m) {
                    Some(n) => got.push(n),
                    None => return got,
                }
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(s.admin_addr, "live", stop.clone());
    thread::sleep(Duration::from_millis(300));
    let out = s.ctl_binary(&["upgrade"]);
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "upgrade: {answer} {}", s.log());
    assert!(answer.contains("\"upgraded\":true"), "{answer}");
    let new = Successor::of(&s);
    assert_ne!(new.0 as u32, old);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let acked = publishing.join().unwrap();
    assert!(
        acked.len() > 20,
        "the publisher got few answers: {}",
        acked.len()
    );
    s.publish("live", "end");

    let mut got_ws = Vec::new();
    loop {
        let v = ws.recv_json_within(LONG);
        match content_number(&v) {
            Some(n) => got_ws.push(n),
            None => {
                assert_eq!(v["content"], "end", "{v}");
                break;
            }
        }
    }
    let mut got_sse = Vec::new();
    loop {
        let e = sse.next_event(LONG).expect("an SSE event");
        match content_number(&e.data) {
            Some(n) => got_sse.push(n),
            None => break,
        }
    }
    let mut got_ndjson = Vec::new();
    loop {
        let v = ndjson.next(LONG).expect("an NDJSON line");
        if v["type"] != "data" {
            continue;
        }
        match content_number(&v) {
            Some(n) => got_ndjson.push(n),
            None => break,
        }
    }
    let mut got_iframe = Vec::new();
    loop {
        let (_, v) = iframe.next(LONG).expect("an iframe script");
        if v["type"] != "data" {
            continue;
        }
        match content_number(&v) {
            Some(n) => got_iframe.push(n),
            None => break,
        }
    }
    let got_poll = poller.join().unwrap();
    check("ws", &got_ws, &acked);
    check("sse", &got_sse, &acked);
    check("ndjson", &got_ndjson, &acked);
    check("iframe", &got_iframe, &acked);
    check("poll", &got_poll, &acked);

    // The poll held through the upgrade is answered by the successor.
    s.publish("quiet", "after");
    let r = held.read_response(LONG).expect("the held poll's answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["content"], "after", "{}", r.text());
    // The frame begun before the upgrade is finished after it.
    half.send(&rest).unwrap();
    let pong = read_text(&mut half);
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["id"], 7, "{pong}");

    // The successor answers the control socket; the old process exited 0.
    let stats = s.ctl_binary(&["stats"]);
    let stats = String::from_utf8_lossy(&stats.stdout).to_string();
    assert!(stats.contains(&format!("-{}-", new.0)), "{stats}");
    let mut s = s;
    let status = s.wait_exit(LONG).expect("the old process exited");
    assert!(status.success(), "{status:?}");
    assert!(s.log().contains("handover: "), "{}", s.log());
}

#[test]
fn a_successor_that_fails_at_start_leaves_the_old_one_serving() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    for binary in ["/bin/false", "/nonexistent/pushedge"] {
        let out = s.ctl_binary(&["upgrade", "--binary", binary]);
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(1), "{answer}");
        assert!(answer.contains("upgrade failed, still serving"), "{answer}");
    }
    assert!(s.wait_log("upgrade failed: ", TIMEOUT), "{}", s.log());
    s.publish("c", "still here");
    assert_eq!(ws.recv_json()["content"], "still here");
}

#[test]
fn a_successor_killed_halfway_leaves_the_old_one_serving_everything() {
    let s = Server::start_with_env(&[], &[("PUSHEDGE_HANDOVER_TEST_EXIT_AFTER", "200")]);
    let mut ws = s.ws("/ws?channel=c");
    let mut sse = s.sse("/sse?channel=c");
    let mut held = s.connect();
    held.send_request("GET", "/poll?channel=q&seq=1", &[], b"", false);
    let mut half = raw_ws(&s, "/ws?channel=other");
    // Idle connections, so that the successor dies with a batch received and more to come.
    let mut idle: Vec<Conn> = (0..250).map(|_| s.connect()).collect();
    s.wait_subscribers("c", 2);
    s.wait_subscribers("q", 1);
    assert!(
        wait_until(TIMEOUT, || s.info()["connections"].as_u64() >= Some(254)),
        "{}",
        s.info()
    );
    s.publish("c", "1");
    assert_eq!(ws.recv_json()["content"], "1");
    assert_eq!(sse.expect_event().data["content"], "1");
    let (first, rest) = half_frame();
    half.send(&first).unwrap();

    let started = Instant::now();
    let out = s.ctl_binary(&["upgrade"]);
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{answer}");
    assert!(answer.contains("did not take over"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(s.wait_log("records", TIMEOUT), "{}", s.log());

    s.publish("c", "2");
    assert_eq!(ws.recv_json()["content"], "2");
    assert_eq!(sse.expect_event().data["content"], "2");
    s.publish("q", "3");
    let r = held.read_response(LONG).expect("the held poll's answer");
    assert_eq!(r.json()[0]["content"], "3", "{}", r.text());
    half.send(&rest).unwrap();
    assert_eq!(read_text(&mut half)["type"], "pong");
    let last = idle.last_mut().unwrap();
    last.send_request("GET", "/healthz", &[], b"", true);
    let r = last
        .read_response(LONG)
        .expect("an idle connection still served");
    assert!(r.status < 500, "{}", r.status);
    // And a second upgrade can be tried after the failed one.
    assert!(s.ctl_binary(&["stats"]).status.success());
}

#[test]
fn the_disk_store_is_handed_over_and_reopened_when_the_successor_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("history_path={}", dir.path().join("h").display());
    let args = ["--set", "history_store=disk", "--set", &path];
    // A successor that dies after the store was closed: the old one opens it again.
    let s = Server::start_with_env(&args, &[("PUSHEDGE_HANDOVER_TEST_EXIT_AFTER", "1")]);
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    s.publish("c", "1");
    assert_eq!(ws.recv_json()["content"], "1");
    let out = s.ctl_binary(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", s.log());
    assert_eq!(s.publish("c", "2"), 2);
    assert_eq!(ws.recv_json()["content"], "2");
    let epoch = s.epoch("c");
    drop(ws);
    drop(s);

    // A successor that takes over: the stream goes on, from the disk.
    let s = Server::start(&args);
    assert_eq!(s.epoch("c"), epoch, "the stream survived the restart");
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    let out = s.ctl_binary(&["upgrade"]);
    assert!(out.status.success(), "{}", s.log());
    let _new = Successor::of(&s);
    assert_eq!(s.publish("c", "3"), 3);
    let v = ws.recv_json_within(LONG);
    assert_eq!(
        (v["content"].as_str(), v["seq"].as_u64()),
        (Some("3"), Some(3)),
        "{v}"
    );
    assert_eq!(v["epoch"], epoch.as_str(), "{v}");
    let r = s.get("/poll?channel=c&seq=1");
    let seqs: Vec<u64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "{}", r.text());
}

#[test]
fn what_cannot_be_handed_over_yet_is_refused_cleanly() {
    let s = Server::start(&[]);
    let out = s.ctl_binary(&["upgrade", "--binary"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: upgrade"));

    // A draining server: refused before any successor starts, and it serves again once
    // resumed. (Socket.IO connections are handed over now: `tests/socketio/handover.test.mjs`;
    // what they refuse is transient, a "...: retry".)
    let mut ctl = s.ctl();
    assert_eq!(ctl.cmd("drain")["type"], "ok");
    let out = s.ctl_binary(&["upgrade"]);
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{answer}");
    assert!(answer.contains("draining: resume it first"), "{answer}");
    assert!(
        !s.log().contains("upgrade: started"),
        "a successor was started:\n{}",
        s.log()
    );
    assert_eq!(ctl.cmd("resume")["resumed"], true);
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    s.publish("c", "still here");
    assert_eq!(ws.recv_json()["content"], "still here");
}

fn next_tls_data<S: std::io::Read + std::io::Write>(ws: &mut tungstenite::WebSocket<S>) -> Value {
    loop {
        if let tungstenite::Message::Text(t) = ws.read().expect("read a message") {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["type"] != "connected" {
                return v;
            }
        }
    }
}

#[test]
fn tls_connections_are_handed_over_with_their_keys() {
    use pushedge_tests::tls::{tls_args, wss, Pki};
    let pki = Pki::new();
    let leaf = pki.leaf("server", &["localhost", "127.0.0.1"], false);
    let mut args = tls_args(&leaf);
    args.extend(["--set".to_string(), "max_message_bytes=300000".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let mut clients = Vec::new();
    for (name, client) in [
        ("13", pki.client_version(&rustls::version::TLS13)),
        ("12", pki.client_version(&rustls::version::TLS12)),
    ] {
        let ch = format!("tls{name}");
        let ws = wss(&client, s.addr, "localhost", &format!("/ws?channel={ch}"));
        s.wait_subscribers(&ch, 1);
        clients.push((ch, ws));
    }
    for (ch, ws) in &mut clients {
        s.publish(ch, "before");
        assert_eq!(next_tls_data(ws)["content"], "before");
    }
    let out = s.ctl_binary(&["upgrade"]);
    assert!(out.status.success(), "{}", s.log());
    let _new = Successor::of(&s);
    // Larger than one TLS record, and the client's own frames (an op), after the upgrade.
    let big = "x".repeat(100_000);
    for (ch, ws) in &mut clients {
        s.publish(ch, &big);
        assert_eq!(next_tls_data(ws)["content"], big.as_str(), "{ch}");
        ws.send(tungstenite::Message::text(r#"{"op":"ping","id":3}"#))
            .expect("send op");
        let v = next_tls_data(ws);
        assert_eq!(
            (v["type"].as_str(), v["id"].as_u64()),
            (Some("pong"), Some(3)),
            "{v}"
        );
    }
}

#[test]
fn a_websocket_with_permessage_deflate_is_handed_over() {
    // python `websockets` negotiates permessage-deflate; it reads one message before the
    // upgrade and two after it, the large one compressed by the new process.
    let s = Server::start(&[]);
    let script = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], open_timeout=5) as ws:
        print("ext", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
        for _ in range(3):
            msg = await asyncio.wait_for(ws.recv(), 15)
            print(len(msg), msg[:60], flush=True)
asyncio.run(main())
"#;
    let url = format!("ws://{}/ws?channel=zip", s.addr);
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    s.wait_subscribers("zip", 1);
    let before = "b".repeat(400);
    s.publish("zip", &before);
    let out = s.ctl_binary(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _next = Successor::of(&s);
    let big = "z".repeat(5000);
    // The successor answers the admin port now.
    assert!(wait_until(LONG, || s.info()["connections"].as_u64() == Some(1)));
    s.publish("zip", &big);
    s.publish("zip", "small after");
    let done = wait_for(LONG, || child.try_wait().ok().flatten());
    let status = done.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the python client did not get its three messages")
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("permessage-deflate"), "{stdout}");
    // Printed: each message's length and its start; in order, nothing missing.
    let lens: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(lens.len(), 3, "{stdout}");
    assert!(
        stdout.contains("\"seq\":2") && stdout.contains("\"seq\":3"),
        "{stdout}"
    );
    assert!(lens[1].parse::<usize>().unwrap() > 5000, "{stdout}");
}

#[test]
fn a_tls_handshake_that_never_ends_does_not_hold_the_upgrade_off() {
    use pushedge_tests::tls::{tls_args, wss, Pki};
    let pki = Pki::new();
    let leaf = pki.leaf("server", &["localhost", "127.0.0.1"], false);
    let args = tls_args(&leaf);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let client = pki.client_version(&rustls::version::TLS13);
    let mut ws = wss(&client, s.addr, "localhost", "/ws?channel=t");
    s.wait_subscribers("t", 1);
    // A client that opened a TCP connection and never sends its ClientHello: its TLS
    // handshake is "in progress" for as long as the server lets it.
    let mut stalled = std::net::TcpStream::connect(s.addr).unwrap();
    assert!(wait_until(TIMEOUT, || s.info()["connections"].as_u64() == Some(2)));
    let out = s.ctl_binary(&["upgrade"]);
    assert!(
        out.status.success(),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        s.log()
    );
    let _new = Successor::of(&s);
    assert!(
        s.log().contains("TLS handshakes in progress were closed"),
        "{}",
        s.log()
    );
    // The stalled client was closed (it had no connection yet: it would retry)...
    use std::io::Read;
    stalled.set_read_timeout(Some(LONG)).unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(stalled.read(&mut b), Ok(0) | Err(_)));
    // ... and the established one goes on.
    s.publish("t", "after");
    assert_eq!(next_tls_data(&mut ws)["content"], "after");
}

/// Reads one unmasked text frame of any length.
fn read_any_text(c: &mut Conn) -> Value {
    let h = c.take_exact(2, LONG).expect("frame header");
    assert_eq!(h[0], 0x81, "a final text frame");
    let len = match h[1] & 0x7f {
        126 => {
            let b = c.take_exact(2, LONG).expect("length");
            usize::from(u16::from_be_bytes([b[0], b[1]]))
        }
        127 => {
            let b = c.take_exact(8, LONG).expect("length");
            usize::try_from(u64::from_be_bytes(b[..8].try_into().unwrap())).unwrap()
        }
        n => usize::from(n),
    };
    let body = c.take_exact(len, LONG).expect("frame payload");
    serde_json::from_slice(&body).expect("JSON")
}

#[test]
fn output_a_client_has_not_read_yet_goes_over_whole_and_in_order() {
    // The client reads nothing until after the upgrade: the kernel's buffers fill, the
    // rest waits in the backend (epoll's queue; io_uring's send in flight, cancelled and
    // counted, and its queue).
    let s = Server::start(&["--set", "slow_consumer_bytes=64000000"]);
    let mut c = raw_ws(&s, "/ws?channel=big");
    s.wait_subscribers("big", 1);
    let pad = "p".repeat(50_000);
    const N: u64 = 400;
    for n in 0..N {
        s.publish("big", &format!("{n} {pad}"));
    }
    let out = s.ctl_binary(&["upgrade"]);
    assert!(out.status.success(), "{}", s.log());
    let _new = Successor::of(&s);
    s.publish("big", "end");
    for n in 0..N {
        let v = read_any_text(&mut c);
        let content = v["content"].as_str().unwrap_or_default();
        assert_eq!(content.split(' ').next(), Some(n.to_string().as_str()));
        assert_eq!(content.len(), n.to_string().len() + 1 + pad.len());
    }
    assert_eq!(read_any_text(&mut c)["content"], "end");
}

#[test]
fn publishers_keep_alive_connections_and_event_streams_go_over_too() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=k");
    s.wait_subscribers("k", 1);
    // A publisher on one keep-alive connection, a request half sent, an event stream.
    let mut publisher = Conn::connect(s.admin_addr);
    publisher.send_request("POST", "/pub?channel=k", &[], b"1", false);
    assert_eq!(publisher.read_response(LONG).unwrap().status, 200);
    let mut half = Conn::connect(s.admin_addr);
    half.send(b"POST /pub?channel=k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n")
        .unwrap();
    let mut events = Conn::connect(s.admin_addr);
    events.send_request("GET", "/events", &[], b"", false);
    assert_eq!(events.read_head(LONG).unwrap().status, 200);
    assert!(
        !events.take_until(b"\n\n", LONG).unwrap().is_empty(),
        "a first event"
    );

    let out = s.ctl_binary(&["upgrade"]);
    assert!(out.status.success(), "{}", s.log());
    let new = Successor::of(&s);
    let mut s = s;
    assert!(s.wait_exit(LONG).expect("the old process exited").success());

    // The old process is gone: what answers now on these connections is the successor.
    publisher.send_request("POST", "/pub?channel=k", &[], b"2", false);
    assert_eq!(publisher.read_response(LONG).unwrap().status, 200);
    half.send(b"\r\n3").unwrap();
    assert_eq!(half.read_response(LONG).unwrap().status, 200);
    for want in ["1", "2", "3"] {
        assert_eq!(ws.recv_json_within(LONG)["content"], want);
    }
    // Events keep coming, from the successor.
    let deadline = Instant::now() + LONG;
    let mut from_new = false;
    while !from_new && Instant::now() < deadline {
        let event = events.take_until(b"\n\n", LONG).expect("an event");
        from_new = String::from_utf8_lossy(&event).contains(&format!("-{}-", new.0));
    }
    assert!(from_new, "no event from the successor");
}
