//! Bad input gets the right status or close code, closes only that connection, and never
//! affects another connection.

use pushedge_tests::*;

/// Sends raw bytes on a new subscriber connection and reads the answer.
fn raw(s: &Server, bytes: &[u8]) -> Response {
    let mut c = s.connect();
    c.send(bytes).unwrap();
    c.read_response(TIMEOUT)
        .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(bytes)))
}

fn assert_error_response(r: &Response, status: u16, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["type"], "error", "{what}: {v}");
    assert_eq!(v["code"], status, "{what}: {v}");
    assert!(
        v["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: {v}"
    );
    assert_eq!(r.header("connection"), Some("close"), "{what}");
}

#[test]
fn malformed_requests_get_400() {
    let s = Server::start(&[]);
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: a\r\n:empty: x\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHo\x01st: a\r\n\r\n",
        b"GET /ping HTTX/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /sse?channel=%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let r = raw(&s, bad);
        assert_error_response(&r, 400, &String::from_utf8_lossy(bad));
    }
    assert!(s.metric("pushedge_protocol_errors_total{kind=\"http_400\"}") >= 8.0);
}

#[test]
fn unknown_methods_and_versions() {
    let s = Server::start(&[]);
    let r = raw(&s, b"FROB /ping HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_error_response(&r, 501, "unknown method");
    let r = raw(&s, b"GET /ping HTTP/2.0\r\nHost: a\r\n\r\n");
    assert_error_response(&r, 505, "HTTP/2.0");
}

#[test]
fn head_too_large_gets_431() {
    let s = Server::start(&[]);
    let mut big = b"GET /sse?channel=a HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 9000));
    // Never finished: the limit is hit before the end of the head.
    let r = raw(&s, &big);
    assert_error_response(&r, 431, "head over max_head_bytes");
    let mut many = b"GET /ping HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let r = raw(&s, &many);
    assert_error_response(&r, 431, "more than max_headers fields");
    let long_target = format!(
        "GET /sse?channel={} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(9000)
    );
    let r = raw(&s, long_target.as_bytes());
    assert_error_response(&r, 431, "long target");
    assert_eq!(
        s.metric("pushedge_protocol_errors_total{kind=\"http_431\"}"),
        3.0
    );
}

#[test]
fn unknown_path_gets_404_and_wrong_method_405() {
    let s = Server::start(&[]);
    for path in [
        "/",
        "/nope",
        "/ws/extra",
        "/SSE?channel=a",
        "/pub?channel=a",
    ] {
        assert_error_response(&s.get(path), 404, path);
    }
    for path in [
        "/ws?channel=a",
        "/sse?channel=a",
        "/poll?channel=a",
        "/stream?channel=a",
    ] {
        let mut c = s.connect();
        c.send_request("POST", path, &[], b"", true);
        let r = c.read_response(TIMEOUT).unwrap();
        assert_error_response(&r, 405, path);
        assert_eq!(r.header("allow"), Some("GET, OPTIONS"), "{path}");
    }
    let r = raw(&s, b"DELETE /ping HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_error_response(&r, 405, "DELETE /ping");
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    // OPTIONS is a CORS preflight (see abuse::origins_are_checked_and_cors_is_answered).
    let r = raw(&s, b"OPTIONS /sse?channel=a HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, OPTIONS")
    );
}

#[test]
fn subscriber_requests_with_a_body_get_400() {
    let s = Server::start(&[]);
    let r = raw(
        &s,
        b"GET /sse?channel=a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_error_response(&r, 400, "Content-Length");
    let r = raw(
        &s,
        b"GET /poll?channel=a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_error_response(&r, 400, "chunked");
    let r = raw(
        &s,
        b"GET /ping HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert_error_response(&r, 400, "conflicting lengths");
}

#[test]
fn bad_channel_names_get_400() {
    let s = Server::start(&[]);
    let long = "a".repeat(129);
    let ok_long = "a".repeat(128);
    for q in [
        "channel=",
        "channel=a%20b",
        "channel=a/b",
        "channel=a,,b",
        "channel=a,",
        "channel=%C3%A9",
        "channel=a*",
        &format!("channel={long}"),
        "cname=bad%00",
        "other=a",
    ] {
        for path in ["/sse", "/stream", "/iframe", "/poll"] {
            let target = format!("{path}?{q}");
            assert_error_response(&s.get(&target), 400, &target);
        }
        if q != "other=a" {
            // /ws allows no channel at all, but not a bad one (refused before the upgrade).
            let mut c = s.connect();
            c.send(RawWs::handshake_request(&format!("/ws?{q}"), "13").as_bytes())
                .unwrap();
            let r = c.read_response(TIMEOUT).unwrap();
            assert_error_response(&r, 400, &format!("/ws?{q}"));
        }
    }
    // Every allowed character, and the longest name.
    let fine = "Az09_-.:@";
    assert_eq!(s.get(&format!("/poll?channel={fine}")).status, 200);
    assert_eq!(s.get(&format!("/poll?channel={ok_long}")).status, 200);
    let _ws = s.ws("/ws");
}

#[test]
fn bad_since_seq_and_cursor_get_400() {
    let s = Server::start(&[]);
    for v in [
        "abc",
        "-1",
        "1.5",
        "",
        "99999999999999999999999",
        "0x10",
        "%201",
    ] {
        for path in ["/sse", "/stream", "/iframe"] {
            let target = format!("{path}?channel=a&since={v}");
            assert_error_response(&s.get(&target), 400, &target);
        }
        let target = format!("/poll?channel=a&seq={v}");
        assert_error_response(&s.get(&target), 400, &target);
        let mut c = s.connect();
        let target = format!("/ws?channel=a&since={v}");
        c.send(RawWs::handshake_request(&target, "13").as_bytes())
            .unwrap();
        assert_error_response(&c.read_response(TIMEOUT).unwrap(), 400, &target);
    }
    for id in ["a", "a:", "a:x", "a:1,a:2", ":1", "bad name:1", "a:-1"] {
        let r = s.get_with("/sse?channel=a", &[("Last-Event-ID", id)]);
        assert_error_response(&r, 400, &format!("Last-Event-ID {id}"));
    }
    for cb in ["alert(1)", "a b", "1abc", "a;b", &"f".repeat(65)] {
        let q = format!("channel=a&cb={}", urlencode(cb));
        assert_error_response(&s.get(&format!("/poll?{q}")), 400, cb);
        assert_error_response(&s.get(&format!("/iframe?{q}")), 400, cb);
    }
}

#[test]
fn websocket_handshake_errors() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send(RawWs::handshake_request("/ws?channel=a", "8").as_bytes())
        .unwrap();
    let r = c.read_response(TIMEOUT).unwrap();
    assert_error_response(&r, 426, "version 8");
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert_eq!(
        s.metric("pushedge_protocol_errors_total{kind=\"http_426\"}"),
        1.0
    );
    // A plain GET to /ws, a missing or short key, no version.
    for req in [
        "GET /ws?channel=a HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ] {
        let r = raw(&s, req.as_bytes());
        assert_error_response(&r, 400, req);
    }
}

/// Frames that break RFC 6455, and the close code each must get.
fn bad_frames() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mask = Some([1, 2, 3, 4]);
    let mut v: Vec<(&'static str, Vec<u8>, u16)> = vec![
        (
            "unmasked frame",
            encode_frame(true, 0, op::TEXT, None, b"{\"op\":\"ping\"}"),
            1002,
        ),
        (
            "reserved data opcode 0x3",
            encode_frame(true, 0, 0x3, mask, b"x"),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            encode_frame(true, 0, 0xB, mask, b""),
            1002,
        ),
        ("RSV1", encode_frame(true, 4, op::TEXT, mask, b"{}"), 1002),
        ("RSV2", encode_frame(true, 2, op::TEXT, mask, b"{}"), 1002),
        ("RSV3", encode_frame(true, 1, op::TEXT, mask, b"{}"), 1002),
        (
            "fragmented ping",
            encode_frame(false, 0, op::PING, mask, b"p"),
            1002,
        ),
        (
            "ping over 125 bytes",
            encode_frame(true, 0, op::PING, mask, &[b'p'; 126]),
            1002,
        ),
        (
            "continuation first",
            encode_frame(true, 0, op::CONT, mask, b"x"),
            1002,
        ),
        (
            "close with a 1-byte payload",
            encode_frame(true, 0, op::CLOSE, mask, &[3]),
            1002,
        ),
        (
            "close with code 999",
            encode_frame(true, 0, op::CLOSE, mask, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "invalid UTF-8 text",
            encode_frame(true, 0, op::TEXT, mask, b"{\"op\":\"\xff\"}"),
            1007,
        ),
        (
            "overlong UTF-8",
            encode_frame(true, 0, op::TEXT, mask, b"\xc0\xaf"),
            1007,
        ),
        (
            "UTF-16 surrogate",
            encode_frame(true, 0, op::TEXT, mask, b"\xed\xa0\x80"),
            1007,
        ),
        (
            // (One frame a little over it is skipped with an error instead: ws_ops.)
            "text far over max_message_bytes",
            encode_frame(true, 0, op::TEXT, mask, &[b' '; 16_001]),
            1009,
        ),
    ];
    // A new message in the middle of a fragmented one.
    let mut interleaved = encode_frame(false, 0, op::TEXT, mask, b"{\"op\":");
    interleaved.extend(encode_frame(true, 0, op::TEXT, mask, b"\"ping\"}"));
    v.push(("text inside a fragmented message", interleaved, 1002));
    // UTF-8 broken across fragments.
    let mut split = encode_frame(false, 0, op::TEXT, mask, b"\xe2\x82");
    split.extend(encode_frame(true, 0, op::CONT, mask, b"\x28"));
    v.push(("invalid UTF-8 across fragments", split, 1007));
    // Fragments that are small one by one but too big together.
    let mut big = encode_frame(false, 0, op::TEXT, mask, &[b' '; 600]);
    big.extend(encode_frame(true, 0, op::CONT, mask, &[b' '; 600]));
    v.push(("fragmented message over max_message_bytes", big, 1009));
    // A length announced beyond the limit, body never sent.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    v.push(("announced 1 TiB", header, 1009));
    v
}

#[test]
fn websocket_protocol_errors_close_with_the_right_code() {
    let s = Server::start(&["--set", "max_message_bytes=1000"]);
    let mut watcher = s.ws("/ws?channel=w");
    let frames = bad_frames();
    for (what, bytes, code) in &frames {
        let mut ws = RawWs::connect(s.addr, "/ws?channel=victim");
        ws.conn.send(bytes).unwrap();
        let got = ws.recv_close(TIMEOUT);
        assert_eq!(got.as_ref().map(|c| c.0), Some(*code), "{what}: {got:?}");
        assert!(
            ws.conn.closed_within(TIMEOUT),
            "{what}: the connection ends"
        );
    }
    let count = |code: u16| frames.iter().filter(|f| f.2 == code).count() as f64;
    for code in [1002u16, 1007, 1009] {
        assert_eq!(
            s.metric(&format!(
                "pushedge_protocol_errors_total{{kind=\"ws_{code}\"}}"
            )),
            count(code),
            "ws_{code}"
        );
    }
    // The watcher saw none of it.
    s.wait_subscribers("w", 1);
    s.publish("w", "fine");
    assert_eq!(watcher.recv_json()["content"], "fine");
}

#[test]
fn websocket_binary_messages_are_refused_on_ws() {
    let s = Server::start(&[]);
    let mut ws = RawWs::connect(s.addr, "/ws?channel=a");
    ws.send_frame(true, 0, op::BINARY, true, &[1, 2, 3]);
    let got = ws.recv_close(TIMEOUT);
    assert_eq!(got.map(|c| c.0), Some(1003));
}

#[test]
fn websocket_control_frames_between_fragments_are_fine() {
    let s = Server::start(&[]);
    let mut ws = RawWs::connect(s.addr, "/ws");
    let mask = Some([9, 8, 7, 6]);
    let mut bytes = encode_frame(false, 0, op::TEXT, mask, b"{\"op\"");
    bytes.extend(encode_frame(true, 0, op::PING, mask, b"hi"));
    bytes.extend(encode_frame(true, 0, op::CONT, mask, b":\"ping\"}"));
    ws.conn.send(&bytes).unwrap();
    let pong = ws.read_frame(TIMEOUT).unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (op::PONG, &b"hi"[..])
    );
    assert_eq!(ws.recv_json(TIMEOUT), json!({"type": "pong"}));
    // Byte by byte works too.
    let frame = encode_frame(true, 0, op::TEXT, mask, b"{\"op\":\"ping\"}");
    for b in frame {
        ws.conn.send(&[b]).unwrap();
    }
    assert_eq!(ws.recv_json(TIMEOUT), json!({"type": "pong"}));
}

#[test]
fn garbage_on_one_connection_never_affects_another() {
    let s = Server::start(&["--set", "max_message_bytes=1000"]);
    let mut ws = s.ws("/ws?channel=iso");
    let mut sse = s.sse("/sse?channel=iso");
    let mut st = s.stream("/stream?channel=iso");
    s.wait_subscribers("iso", 3);
    let mut garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03\xff\xfe\xfd".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n\r\n\r\n\x00".to_vec(),
        vec![b'A'; 100_000],
        b"GET /ws?channel=iso HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\xff\xff".to_vec(),
        (0..=255u8).cycle().take(20_000).collect(),
    ];
    garbage.extend(bad_frames().into_iter().map(|f| f.1));
    for (i, g) in garbage.iter().enumerate() {
        // Raw garbage on a fresh connection, and garbage after a good WebSocket handshake.
        let mut c = s.connect();
        let _ = c.send(g);
        let mut bad_ws = RawWs::connect(s.addr, "/ws?channel=iso");
        let _ = bad_ws.conn.send(g);
        let _ = c.read_to_eof(TIMEOUT);
        let _ = bad_ws.conn.read_to_eof(TIMEOUT);
        let seq = s.publish("iso", &format!("after garbage {i}"));
        let want = json!({"type": "data", "channel": "iso", "seq": seq, "epoch": s.epoch("iso"), "content": format!("after garbage {i}")});
        assert_eq!(ws.recv_json(), want, "garbage {i}");
        assert_eq!(sse.expect_event().data, want, "garbage {i}");
        assert_eq!(st.expect(), want, "garbage {i}");
    }
    assert_eq!(s.get("/ping").status, 200);
    s.wait_subscribers("iso", 3);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 3));
}
