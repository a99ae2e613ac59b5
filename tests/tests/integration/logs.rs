//! Logs an operator can use (issue 16, item 3): connection events at debug with the
//! connection id, peer, channels, close code and reason; auth failures and kicks at info;
//! client publishes at debug; `log_format = "json"`; the client's address behind a
//! trusted proxy (`X-Forwarded-For`, PROXY protocol v1 and v2); the access log.

use pushedge_tests::*;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

const SECRET: &[u8] = b"t0ps3cret";

/// The `ctl conns` entry of the connection whose client port is `port`.
fn conn_by_port(s: &Server, port: u16) -> Value {
    let suffix = format!(":{port}");
    let mut ctl = s.ctl();
    wait_for(TIMEOUT, || {
        ctl.cmd("conns")["conns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["peer"].as_str().unwrap_or("").ends_with(&suffix))
            .cloned()
    })
    .unwrap_or_else(|| panic!("no connection from port {port}: {}", ctl.cmd("conns")))
}

/// The only connection `ctl conns` lists.
fn only_conn(s: &Server) -> Value {
    let mut ctl = s.ctl();
    wait_for(TIMEOUT, || {
        let v = ctl.cmd("conns");
        let all = v["conns"].as_array().unwrap().clone();
        (all.len() == 1).then(|| all[0].clone())
    })
    .unwrap_or_else(|| panic!("not one connection: {}", ctl.cmd("conns")))
}

/// The log's lines that contain every one of `parts`.
fn lines_with(s: &Server, parts: &[&str]) -> Vec<String> {
    s.log()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

fn wait_line(s: &Server, parts: &[&str]) -> String {
    wait_for(TIMEOUT, || lines_with(s, parts).into_iter().next())
        .unwrap_or_else(|| panic!("no line with {parts:?} in the log:\n{}", s.log()))
}

#[test]
fn connection_events_publishes_and_closes_at_debug() {
    let s = Server::start(&[
        "--set",
        "log_level=debug",
        "--set",
        "client_publish=[\"chat.*\"]",
    ]);
    let mut ws = s.ws("/ws?channel=chat.a,news");
    let port = ws.ws.get_ref().local_addr().unwrap().port();
    let c = conn_by_port(&s, port);
    let id = c["id"].as_str().unwrap().to_string();
    let peer = format!("127.0.0.1:{port}");
    let conn = format!("conn={id} ");
    let accepted = wait_line(&s, &[" debug ", "accepted", &conn]);
    assert!(accepted.contains(&format!("peer={peer}")), "{accepted}");
    let session = wait_line(&s, &["session", &conn]);
    assert!(session.contains("transport=ws"), "{session}");
    assert!(session.contains("channels=chat.a,news"), "{session}");
    assert!(session.contains(&format!("peer={peer}")), "{session}");

    let ok = ws.op_ok(&json!({"op": "pub", "channel": "chat.a", "content": "hello", "id": 1}));
    assert_eq!(ok["op"], "pub");
    let publish = wait_line(&s, &["client publish", &conn]);
    assert!(publish.contains("channel=chat.a"), "{publish}");
    assert!(publish.contains("bytes=5"), "{publish}");

    // The client closes with a code and a reason.
    ws.ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye now".into(),
        }))
        .unwrap();
    let _ = ws.recv_close(TIMEOUT);
    let closed = wait_line(&s, &["closed", &conn]);
    assert!(closed.contains("code=1001"), "{closed}");
    assert!(
        closed.contains("reason=\"closed by the peer: bye now\""),
        "{closed}"
    );
    assert!(closed.contains("channels=chat.a,news"), "{closed}");
    assert!(closed.contains(&format!("peer={peer}")), "{closed}");
}

#[test]
fn kicks_at_info_and_server_closes_with_their_code() {
    let s = Server::start(&["--set", "log_level=debug"]);
    let mut ws = s.ws("/ws?channel=k");
    let port = ws.ws.get_ref().local_addr().unwrap().port();
    let id = conn_by_port(&s, port)["id"].as_str().unwrap().to_string();
    let mut ctl = s.ctl();
    assert_eq!(ctl.cmd(&format!("kick {id}"))["type"], "ok");
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008));
    let conn = format!("conn={id} ");
    let kicked = wait_line(&s, &[" info ", "kicked", &conn]);
    assert!(
        kicked.contains(&format!("peer=127.0.0.1:{port}")),
        "{kicked}"
    );
    let closed = wait_line(&s, &["closed", &conn]);
    assert!(closed.contains("code=1008"), "{closed}");
    assert!(closed.contains("reason=\"kicked by operator\""), "{closed}");
    assert!(closed.contains("channels=k"), "{closed}");

    // A stream ended by the server says why; an HTTP error says its status.
    let sse = s.sse("/sse?channel=k2");
    s.wait_subscribers("k2", 1);
    let port = sse.conn.stream.local_addr().unwrap().port();
    let id = conn_by_port(&s, port)["id"].as_str().unwrap().to_string();
    assert_eq!(ctl.cmd(&format!("kick {id}"))["type"], "ok");
    let closed = wait_line(&s, &["closed", &format!("conn={id} ")]);
    assert!(closed.contains("reason=\"kicked by operator\""), "{closed}");
    assert!(
        !closed.contains("code="),
        "a stream has no close code: {closed}"
    );
    assert_eq!(s.get("/nope").status, 404);
    let closed = wait_line(&s, &["closed", "code=404"]);
    assert!(closed.contains("reason=\"no such endpoint\""), "{closed}");
}

#[test]
fn auth_failures_at_info() {
    let s = Server::start(&["--set", "token_secret=t0ps3cret", "--set", "auth=token"]);
    // A bad token on a WebSocket: 101, then close 1008.
    let mut ws = s.ws("/ws?channel=c&token=garbage");
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008));
    let line = wait_line(&s, &[" info ", "auth failed", "what=ws"]);
    assert!(line.contains("conn="), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("reason="), "{line}");
    // An expired token on SSE, a channel the token does not grant on a long-poll.
    let old = token_for(&["c"], unix_now() - 10, SECRET);
    assert_eq!(s.get(&format!("/sse?channel=c&token={old}")).status, 401);
    let line = wait_line(&s, &["auth failed", "what=subscribe"]);
    assert!(line.contains("expired"), "{line}");
    let other = token_for(&["other"], unix_now() + 600, SECRET);
    assert_eq!(s.get(&format!("/poll?channel=c&token={other}")).status, 401);
    wait_line(&s, &["auth failed", "what=poll"]);
    // A `sub` op to a channel the token does not grant.
    let good = token_for(&["c"], unix_now() + 600, SECRET);
    let mut ws = s.ws(&format!("/ws?channel=c&token={good}"));
    ws.send_json(&json!({"op": "sub", "channel": "secret", "id": 1}));
    let answer = ws.recv_json();
    assert_eq!(answer["code"], 403, "{answer}");
    let line = wait_line(&s, &["auth failed", "what=sub"]);
    assert!(line.contains("conn="), "{line}");
    // None of it at debug: the level is info.
    assert!(lines_with(&s, &[" debug "]).is_empty(), "{}", s.log());
}

#[test]
fn debug_lines_only_when_the_level_says_so_and_it_changes_live() {
    let s = Server::start(&[]);
    let ws = s.ws("/ws?channel=q");
    s.wait_subscribers("q", 1);
    drop(ws);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));
    assert!(lines_with(&s, &["accepted"]).is_empty(), "{}", s.log());
    assert!(lines_with(&s, &["closed conn="]).is_empty(), "{}", s.log());
    let mut ctl = s.ctl();
    assert_eq!(ctl.cmd("config set log_level debug")["type"], "ok");
    let _ws = s.ws("/ws?channel=q");
    wait_line(&s, &["session", "transport=ws", "channels=q"]);
}

#[test]
fn json_lines_parse_and_carry_the_fields() {
    let s = Server::start(&["--set", "log_format=json", "--set", "log_level=debug"]);
    let mut ws = s.ws("/ws?channel=j");
    let port = ws.ws.get_ref().local_addr().unwrap().port();
    let id = conn_by_port(&s, port)["id"].as_str().unwrap().to_string();
    ws.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done \"quoted\"".into(),
        }))
        .unwrap();
    let _ = ws.recv_close(TIMEOUT);
    let closed = wait_for(TIMEOUT, || {
        s.log()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|v| v["msg"] == "closed" && v["conn"] == id.as_str())
    })
    .unwrap_or_else(|| panic!("no closed line:\n{}", s.log()));
    assert_eq!(closed["level"], "debug");
    assert!(closed["ts"].as_str().unwrap().ends_with('Z'), "{closed}");
    assert_eq!(closed["peer"], format!("127.0.0.1:{port}"));
    assert_eq!(closed["code"], 1000);
    assert_eq!(closed["reason"], "closed by the peer: done \"quoted\"");
    assert_eq!(closed["channels"], "j");
    // Every line is one object with ts, level and msg, the ready line included.
    let mut n = 0;
    for line in s.log().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string());
        n += 1;
    }
    assert!(n >= 3, "{}", s.log());
    let session = s
        .log()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["msg"] == "session" && v["conn"] == id.as_str())
        .expect("a session line");
    assert_eq!(session["transport"], "ws");
    assert_eq!(session["channels"], "j");
}

/// An SSE request with extra header fields on a raw connection; returns it once the
/// stream's head is in.
fn sse_with(s: &Server, conn: &mut Conn, channel: &str, headers: &[(&str, &str)]) {
    conn.send_request(
        "GET",
        &format!("/sse?channel={channel}"),
        headers,
        b"",
        false,
    );
    let head = conn.read_head(TIMEOUT).expect("the stream's head");
    assert_eq!(head.status, 200);
    s.wait_subscribers(channel, 1);
}

#[test]
fn forwarded_for_from_a_trusted_proxy_only() {
    let s = Server::start(&[
        "--set",
        "trusted_proxies=[\"127.0.0.1\"]",
        "--set",
        "log_level=debug",
    ]);
    let mut c = Conn::connect(s.addr);
    let xff = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9")];
    sse_with(&s, &mut c, "x", &xff);
    assert_eq!(only_conn(&s)["peer"], "203.0.113.9");
    wait_line(&s, &["session", "peer=203.0.113.9", "channels=x"]);
    drop(c);

    // The same header from a peer that is not trusted is ignored.
    let s = Server::start(&["--set", "trusted_proxies=[\"10.0.0.0/8\"]"]);
    let mut c = Conn::connect(s.addr);
    sse_with(&s, &mut c, "x", &xff);
    let port = c.stream.local_addr().unwrap().port();
    assert_eq!(only_conn(&s)["peer"], format!("127.0.0.1:{port}"));
}

fn proxy_v2(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_from_a_trusted_peer_only() {
    let s = Server::start(&[
        "--set",
        "proxy_protocol=true",
        "--set",
        "trusted_proxies=[\"127.0.0.1\"]",
        "--set",
        "log_level=debug",
    ]);
    // v1, sent in two pieces.
    let mut c = Conn::connect(s.addr);
    c.send(b"PROXY TCP4 203.0.113.7 10.0.0.1 ").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"40000 8100\r\n").unwrap();
    sse_with(&s, &mut c, "p1", &[]);
    assert_eq!(only_conn(&s)["peer"], "203.0.113.7:40000");
    wait_line(&s, &["proxied", "peer=203.0.113.7:40000", "version=1"]);
    drop(c);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));

    // v2, with the request in the same write.
    let mut c = Conn::connect(s.addr);
    c.send(&proxy_v2([198, 51, 100, 4], 5555, [10, 0, 0, 1], 8100))
        .unwrap();
    sse_with(&s, &mut c, "p2", &[]);
    assert_eq!(only_conn(&s)["peer"], "198.51.100.4:5555");
    drop(c);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));

    // Without a header the connection is served as it is.
    assert_eq!(s.get("/ping").status, 200);

    // A header from a peer that is not trusted (127.0.0.2) is refused: closed, no
    // answer.
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    for header in [
        b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\r\n".to_vec(),
        proxy_v2([1, 2, 3, 4], 1, [10, 0, 0, 1], 2),
    ] {
        let mut c = Conn::connect_from(s.addr, two).expect("connect from 127.0.0.2");
        c.send(&header).unwrap();
        c.send_request("GET", "/ping", &[], b"", false);
        let rest = c.read_to_eof(TIMEOUT).expect("closed");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(
        lines_with(&s, &["PROXY header refused", "peer=127.0.0.2:"]).len(),
        2,
        "{}",
        s.log()
    );
    // A malformed header from the trusted peer is refused too.
    let mut c = Conn::connect(s.addr);
    c.send(b"PROXY TCP4 nonsense\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(c.read_to_eof(TIMEOUT).expect("closed").is_empty());
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let out = run_binary(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--set",
        "proxy_protocol=true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trusted_proxies"), "{err}");
    let out = run_binary(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--set",
        "trusted_proxies=[\"10.0.0.300\"]",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_access_log_gets_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let set = format!("access_log={}", path.display());
    let s = Server::start(&["--set", &set]);
    assert_eq!(s.get("/ping").status, 200);
    assert_eq!(s.get("/poll?channel=a&token=sekrit").status, 200);
    assert_eq!(s.get("/nope").status, 404);
    let mut ws = s.ws("/ws?channel=w");
    s.wait_subscribers("w", 1);
    ws.ws.close(None).unwrap();
    let _ = ws.recv_close(TIMEOUT);
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    let has = |parts: &[&str]| read().lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        wait_until(TIMEOUT, || has(&[
            "path=\"/ws?channel=w\"",
            "status=101",
            "session=ws"
        ])),
        "{}",
        read()
    );
    assert!(has(&[
        "method=GET",
        "path=/ping",
        "status=200",
        "bytes=16",
        "peer=127.0.0.1:"
    ]));
    assert!(
        has(&["path=\"/poll?channel=a&token=<redacted>\"", "status=200"]),
        "{}",
        read()
    );
    assert!(!read().contains("sekrit"));
    assert!(has(&["path=/nope", "status=404"]), "{}", read());
    assert!(read().lines().all(|l| l.contains(" ms=")), "{}", read());
    let metrics = s.admin_get("/metrics");
    assert!(
        metrics.text().contains("pushedge_access_log_lines_total 4"),
        "{}",
        metrics.text()
    );
    assert!(metrics
        .text()
        .contains("pushedge_access_log_dropped_total 0"));
}

#[test]
fn the_access_log_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let set = format!("access_log={}", path.display());
    let s = Server::start(&["--set", &set, "--set", "log_format=json"]);
    assert_eq!(s.get("/healthz").status, 200);
    let line = wait_for(TIMEOUT, || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
    })
    .expect("an access line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/healthz");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 3);
    assert!(v["ms"].is_number() && v["ts"].is_string(), "{v}");
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}
