//! The admin API: publish (POST and GET), broadcast, close, clear, sign, info, channels,
//! metrics, and `admin_token`.

use pushedge_tests::*;
use serde_json::Value;

fn data(channel: &str, seq: u64, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "content": content})
}

#[test]
fn pub_by_post_and_by_get() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    let r = s.admin_post("/pub?channel=c", b"by post");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let e = s.epoch("c");
    assert_eq!(
        r.json(),
        json!({"type": "ok", "channel": "c", "seq": 1, "epoch": e})
    );
    let r = s.admin_get("/pub?channel=c&content=by%20get");
    assert_eq!(
        r.json(),
        json!({"type": "ok", "channel": "c", "seq": 2, "epoch": e})
    );
    let r = s.admin_get("/pub?cname=c&content=alias");
    assert_eq!(
        r.json(),
        json!({"type": "ok", "channel": "c", "seq": 3, "epoch": e})
    );
    // An empty POST body falls back to content=.
    let r = s.admin_post("/pub?channel=c&content=from%20query", b"");
    assert_eq!(r.json()["seq"], 4);
    // A chunked body.
    let mut conn = Conn::connect(s.admin_addr);
    conn.send(
        b"POST /pub?channel=c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nchunk\r\n3\r\ned!\r\n0\r\n\r\n",
    )
    .unwrap();
    let r = conn.read_response(TIMEOUT).unwrap();
    assert_eq!(
        r.json(),
        json!({"type": "ok", "channel": "c", "seq": 5, "epoch": e})
    );
    let want = ["by post", "by get", "alias", "from query", "chunked!"];
    for (i, content) in want.iter().enumerate() {
        assert_eq!(no_epoch(ws.recv_json()), data("c", i as u64 + 1, content));
    }
}

#[test]
fn pub_errors() {
    let s = Server::start(&["--set", "max_message_bytes=1000"]);
    let r = s.admin_post("/pub", b"x");
    assert_eq!(r.status, 400, "missing channel");
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["code"], 400);
    assert_eq!(s.admin_post("/pub?channel=bad%20name", b"x").status, 400);
    assert_eq!(s.admin_post("/pub?channel=", b"x").status, 400);
    let long = "a".repeat(129);
    assert_eq!(
        s.admin_post(&format!("/pub?channel={long}"), b"x").status,
        400
    );
    assert_eq!(
        s.admin_post("/pub?channel=c", &[0xff, 0xfe, b'x']).status,
        400,
        "content must be UTF-8"
    );
    let r = s.admin_post("/pub?channel=c", &vec![b'x'; 1001]);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = s.admin_post("/pub?channel=c", &vec![b'x'; 1000]);
    assert_eq!(
        r.status,
        200,
        "exactly max_message_bytes is fine: {}",
        r.text()
    );
    let r = s.admin("DELETE", "/pub?channel=c", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
}

#[test]
fn admin_connection_is_keep_alive_and_pipelined() {
    let s = Server::start(&[]);
    let mut c = Conn::connect(s.admin_addr);
    c.send(
        b"POST /pub?channel=k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na\
          POST /pub?channel=k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nb\
          GET /info?channel=k HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read_response(TIMEOUT).unwrap().json()["seq"], 1);
    assert_eq!(c.read_response(TIMEOUT).unwrap().json()["seq"], 2);
    assert_eq!(c.read_response(TIMEOUT).unwrap().json()["buffered"], 2);
}

#[test]
fn broadcast_reaches_every_channel() {
    let s = Server::start(&[]);
    let mut a = s.ws("/ws?channel=a");
    let mut b = s.stream("/stream?channel=b");
    s.wait_subscribers("a", 1);
    s.wait_subscribers("b", 1);
    s.publish("a", "first");
    let r = s.admin_post("/broadcast", b"to all");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"type": "ok", "channels": 2}));
    assert_eq!(no_epoch(a.recv_json()), data("a", 1, "first"));
    assert_eq!(no_epoch(a.recv_json()), data("a", 2, "to all"));
    assert_eq!(no_epoch(b.expect()), data("b", 1, "to all"));
    let r = s.admin_get("/broadcast");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
}

#[test]
fn close_sends_close_to_every_subscriber() {
    let s = Server::start(&[]);
    s.publish("c", "before");
    let mut ws = s.ws("/ws?channel=c,d");
    let mut sse = s.sse("/sse?channel=c");
    let mut st = s.stream("/stream?channel=c");
    let mut fr = s.iframe("/iframe?channel=c");
    let mut poll = s.connect();
    poll.send_request("GET", "/poll?channel=c&seq=2", &[], b"", true);
    s.wait_subscribers("c", 5);
    let r = s.admin_post("/close?channel=c", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"type": "ok", "channel": "c"}));
    let close = json!({"type": "close", "channel": "c"});
    assert_eq!(ws.recv_json(), close);
    assert_eq!(sse.expect_event().data, close);
    assert_eq!(st.expect(), close);
    assert_eq!(fr.expect().1, close);
    let r = poll.read_response(TIMEOUT).unwrap();
    assert_eq!(no_epoch(r.json()), json!([close]));
    // Streams whose only channel closed end cleanly.
    assert_eq!(st.next(TIMEOUT), Err(ReadError::Closed));
    assert!(st.ended(), "the stream ended with the last chunk");
    assert_eq!(fr.next(TIMEOUT), Err(ReadError::Closed));
    assert!(sse.conn.closed_within(TIMEOUT));
    // The WebSocket stays open with its other channel.
    s.wait_subscribers("d", 1);
    s.publish("d", "still here");
    assert_eq!(no_epoch(ws.recv_json()), data("d", 1, "still here"));
    // The channel is gone: a new one starts again at seq 1.
    let info = s.channel_info("c");
    assert_eq!(
        (info["seq"].clone(), info["subscribers"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(s.publish("c", "again"), 1);
    assert_eq!(s.admin_post("/close?channel=nope", b"").status, 404);
    assert_eq!(s.admin_post("/close", b"").status, 400);
    assert_eq!(s.admin_get("/close?channel=c").status, 405);
}

#[test]
fn clear_drops_history_and_keeps_the_seq() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("c", &format!("m{i}"));
    }
    let r = s.admin_post("/clear?channel=c", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"type": "ok", "channel": "c"}));
    let info = s.channel_info("c");
    assert_eq!(info["seq"], 3);
    assert_eq!(info["buffered"], 0);
    let mut ws = s.ws("/ws?channel=c&since=1");
    assert_eq!(
        ws.recv_json(),
        json!({"type": "gap", "channel": "c", "from": 1, "to": 3})
    );
    s.wait_subscribers("c", 1);
    assert_eq!(s.publish("c", "m4"), 4);
    assert_eq!(no_epoch(ws.recv_json()), data("c", 4, "m4"));
    assert_eq!(s.admin_post("/clear?channel=nope", b"").status, 404);
}

#[test]
fn sign_mints_tokens() {
    let s = Server::start(&["--set", "token_secret=k3y"]);
    let before = unix_now();
    let r = s.admin_get("/sign?channel=c&ttl=60");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "sign");
    assert_eq!(v["channel"], "c");
    let token = v["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let expires = v["expires"].as_u64().unwrap();
    assert!((before + 60..=unix_now() + 60).contains(&expires), "{v}");
    let r = s.admin_get("/sign?channel=c");
    let default_exp = r.json()["expires"].as_u64().unwrap();
    assert!(
        default_exp >= before + 3600,
        "default ttl is token_ttl_secs (3600)"
    );
    assert_eq!(s.admin_get("/sign").status, 400);
    assert_eq!(s.admin_get("/sign?channel=c&ttl=0").status, 400);
    assert_eq!(s.admin_get("/sign?channel=c&ttl=x").status, 400);
    assert_eq!(s.admin_get("/sign?channel=bad%20name").status, 400);
    // Without a secret there is nothing to sign with.
    let s = Server::start(&[]);
    assert_eq!(s.admin_get("/sign?channel=c").status, 400);
}

#[test]
fn info_totals_and_per_channel() {
    let s = Server::start(&[]);
    let _w1 = s.ws("/ws?channel=i");
    let _w2 = s.ws("/ws?channel=i,j");
    let _e = s.sse("/sse?channel=i");
    s.wait_subscribers("i", 3);
    s.publish("i", "x");
    s.publish("i", "y");
    let info = s.info();
    assert_eq!(info["type"], "info");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["workers"], 2);
    assert_eq!(info["connections"], 3);
    assert_eq!(info["by_transport"]["ws"], 2);
    assert_eq!(info["by_transport"]["sse"], 1);
    assert_eq!(info["channels"], 2);
    assert_eq!(info["subscriptions"], 4);
    assert_eq!(info["published"], 2);
    assert_eq!(info["buffered"], 2);
    assert_eq!(info["draining"], false);
    assert!(info["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(info["uptime_secs"].is_u64());
    assert!(wait_until(TIMEOUT, || s.info()["delivered"] == 6));
    assert_eq!(
        s.channel_info("i"),
        json!({"type": "info", "channel": "i", "epoch": s.epoch("i"), "seq": 2, "subscribers": 3, "buffered": 2})
    );
    assert_eq!(
        s.channel_info("unknown"),
        json!({"type": "info", "channel": "unknown", "seq": 0, "subscribers": 0, "buffered": 0})
    );
    assert_eq!(s.admin_get("/info?channel=bad%20name").status, 400);
    assert_eq!(s.admin_post("/info", b"").status, 405);
}

#[test]
fn channels_lists_by_prefix() {
    let s = Server::start(&[]);
    for ch in ["app.b", "app.a", "other", "app.c"] {
        s.publish(ch, "x");
    }
    let r = s.admin_get("/channels?prefix=app.");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["type"], "channels");
    let names: Vec<&str> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app.a", "app.b", "app.c"]);
    assert_eq!(
        v["channels"][0],
        json!({"channel": "app.a", "epoch": s.epoch("app.a"), "seq": 1, "subscribers": 0, "buffered": 1})
    );
    let all = s.admin_get("/channels").json();
    assert_eq!(all["channels"].as_array().unwrap().len(), 4);
    let one = s.admin_get("/channels?limit=1").json();
    assert_eq!(one["channels"].as_array().unwrap().len(), 1);
    assert_eq!(s.admin_get("/channels?limit=0").status, 400);
    let none = s.admin_get("/channels?prefix=zzz").json();
    assert_eq!(none["channels"], json!([]));
}

#[test]
fn metrics_are_prometheus_text_with_the_counters() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=m");
    s.wait_subscribers("m", 1);
    s.publish("m", "x");
    ws.recv_json();
    assert_eq!(s.get("/nope").status, 404);
    let r = s.admin_get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for needle in [
        "# TYPE pushedge_connections gauge",
        "# TYPE pushedge_messages_published_total counter",
        "# TYPE pushedge_messages_delivered_total counter",
        "# TYPE pushedge_slow_consumer_closes_total counter",
        "# TYPE pushedge_heartbeat_timeouts_total counter",
        "# TYPE pushedge_handshake_timeouts_total counter",
        "# TYPE pushedge_protocol_errors_total counter",
        "# TYPE pushedge_connections_accepted_total counter",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let m = |k: &str| metric_value(text, k);
    assert_eq!(m("pushedge_connections{transport=\"ws\"}"), Some(1.0));
    assert_eq!(m("pushedge_messages_published_total"), Some(1.0));
    assert_eq!(m("pushedge_messages_delivered_total"), Some(1.0));
    assert_eq!(m("pushedge_channels"), Some(1.0));
    assert_eq!(m("pushedge_subscriptions"), Some(1.0));
    assert_eq!(
        m("pushedge_protocol_errors_total{kind=\"http_404\"}"),
        Some(1.0)
    );
    assert!(m("pushedge_connections_accepted_total").unwrap() >= 2.0);
    assert!(m("pushedge_bytes_out_total").unwrap() > 0.0);
    assert_eq!(m("pushedge_slow_consumer_closes_total"), Some(0.0));
}

#[test]
fn admin_token_is_required_when_set() {
    let s = Server::start(&["--set", "admin_token=s3cret"]);
    for (method, target) in [
        ("GET", "/info"),
        ("POST", "/pub?channel=c"),
        ("GET", "/metrics"),
    ] {
        let r = s.admin(method, target, &[], b"x");
        assert_eq!(r.status, 401, "{method} {target} without a token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["type"], "error");
        let r = s.admin(method, target, &[("Authorization", "Bearer wrong")], b"x");
        assert_eq!(r.status, 401, "{method} {target} with a wrong token");
        let r = s.admin(method, target, &[("Authorization", "Basic s3cret")], b"x");
        assert_eq!(r.status, 401, "{method} {target} with another scheme");
        let r = s.admin(method, target, &[("Authorization", "Bearer s3cret")], b"x");
        assert_eq!(
            r.status,
            200,
            "{method} {target} with the token: {}",
            r.text()
        );
    }
    // Unknown paths do not reveal themselves without a token.
    assert_eq!(s.admin_get("/nope").status, 401);
    // The subscriber port does not need it.
    assert_eq!(s.get("/ping").status, 200);
    assert_eq!(s.get("/poll?channel=c&seq=1").json()[0]["content"], "x");
}

#[test]
fn unknown_admin_paths_and_methods() {
    let s = Server::start(&[]);
    let r = s.admin_get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 404);
    let r = s.admin("PUT", "/info", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let mut c = Conn::connect(s.admin_addr);
    c.send(b"garbage\r\n\r\n").unwrap();
    assert_eq!(c.read_response(TIMEOUT).unwrap().status, 400);
}
