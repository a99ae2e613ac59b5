//! Every subscriber endpoint delivers what is published, with `channel` and `cname`, and
//! several channels on one connection.

use pushedge_tests::*;
use serde_json::Value;

/// A data message as `s` delivers it, with the channel's current epoch.
fn data(s: &Server, channel: &str, seq: u64, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "epoch": s.epoch(channel), "content": content})
}

#[test]
fn ping_and_healthz() {
    let s = Server::start(&[]);
    let r = s.get("/ping");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.json(), json!({"type": "ping"}));
    let r = s.get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim_end(), "ok");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn head_and_keep_alive_on_simple_endpoints() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = c.read_head(TIMEOUT).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3"));
    // No body after a HEAD answer: the next response on the connection parses cleanly.
    c.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!((r.status, r.json()), (200, json!({"type": "ping"})));
    // Pipelined requests are answered in order.
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(TIMEOUT).unwrap().text().trim_end(), "ok");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.json(), json!({"type": "ping"}));
    assert!(c.closed_within(TIMEOUT), "Connection: close is honoured");
}

#[test]
fn ws_delivers_published_messages() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=news");
    s.wait_subscribers("news", 1);
    assert_eq!(s.publish("news", "hello"), 1);
    assert_eq!(s.publish("news", "world"), 2);
    assert_eq!(ws.recv_json(), data(&s, "news", 1, "hello"));
    assert_eq!(ws.recv_json(), data(&s, "news", 2, "world"));
    // Other channels do not leak in.
    s.publish("other", "x");
    ws.expect_quiet();
}

#[test]
fn cname_is_an_alias_of_channel() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?cname=alias");
    let mut sse = s.sse("/sse?cname=alias");
    let mut stream = s.stream("/stream?cname=alias");
    let mut iframe = s.iframe("/iframe?cname=alias");
    s.wait_subscribers("alias", 4);
    s.publish("alias", "x");
    let want = data(&s, "alias", 1, "x");
    assert_eq!(ws.recv_json(), want);
    assert_eq!(sse.expect_event().data, want);
    assert_eq!(stream.expect(), want);
    assert_eq!(iframe.expect().1, want);
    let r = s.get("/poll?cname=alias&seq=1");
    assert_eq!(r.json(), json!([want]));
}

#[test]
fn sse_stream_format() {
    let s = Server::start(&[]);
    let mut sse = s.sse("/sse?channel=news");
    assert!(sse
        .head
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
    let first = sse.next_block(TIMEOUT).unwrap();
    assert_eq!(
        first.retry,
        Some(2000),
        "the stream starts with retry: {first:?}"
    );
    s.wait_subscribers("news", 1);
    s.publish("news", "a");
    s.publish("news", "b");
    let e = sse.expect_event();
    let epoch = s.epoch("news");
    assert_eq!(e.id, Some(format!("news:1@{epoch}")));
    assert_eq!(e.data, data(&s, "news", 1, "a"));
    let e = sse.expect_event();
    assert_eq!(e.id, Some(format!("news:2@{epoch}")));
    assert_eq!(e.data, data(&s, "news", 2, "b"));
}

#[test]
fn sse_retry_is_configurable() {
    let s = Server::start(&["--set", "sse_retry_ms=750"]);
    let mut sse = s.sse("/sse?channel=a");
    assert_eq!(sse.next_block(TIMEOUT).unwrap().retry, Some(750));
}

#[test]
fn stream_is_chunked_ndjson() {
    let s = Server::start(&[]);
    let mut st = s.stream("/stream?channel=news");
    assert_eq!(st.head.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(st.head.header("transfer-encoding"), Some("chunked"));
    s.wait_subscribers("news", 1);
    for i in 1..=3 {
        s.publish("news", &format!("m{i}"));
    }
    for i in 1..=3 {
        assert_eq!(st.expect(), data(&s, "news", i, &format!("m{i}")));
    }
}

#[test]
fn iframe_streams_script_tags() {
    let s = Server::start(&[]);
    let mut def = s.iframe("/iframe?channel=news");
    let mut named = s.iframe("/iframe?channel=news&cb=app.onMessage");
    assert!(def
        .head
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    s.wait_subscribers("news", 2);
    s.publish("news", "</script><b>hi</b>");
    let (cb, v) = def.expect();
    assert_eq!(cb, "pushedge");
    assert_eq!(v, data(&s, "news", 1, "</script><b>hi</b>"));
    assert!(
        def.other.iter().any(|c| c.contains("<!DOCTYPE html>")),
        "a document preamble comes first: {:?}",
        def.other
    );
    let (cb, v) = named.expect();
    assert_eq!(cb, "app.onMessage");
    assert_eq!(v, data(&s, "news", 1, "</script><b>hi</b>"));
}

/// Publishes pipelined on one admin connection reach the workers back to back and are
/// delivered as runs; every subscriber, whatever its wire form, still gets each message
/// once and in order.
#[test]
fn pipelined_publishes_reach_every_wire_form_in_order() {
    const N: u64 = 40;
    let s = Server::start(&[]);
    let mut a = s.iframe("/iframe?channel=run");
    let mut b = s.iframe("/iframe?channel=run");
    let mut named = s.iframe("/iframe?channel=run&cb=f");
    let mut sse = s.sse("/sse?channel=run,other");
    s.wait_subscribers("run", 4);
    let mut admin = Conn::connect(s.admin_addr);
    let mut reqs = Vec::new();
    for i in 1..=N {
        let body = format!("m{i}");
        reqs.extend_from_slice(
            format!(
                "POST /pub?channel=run HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    admin.send(&reqs).unwrap();
    for i in 1..=N {
        assert_eq!(admin.read_response(TIMEOUT).unwrap().json()["seq"], i);
    }
    for i in 1..=N {
        let want = data(&s, "run", i, &format!("m{i}"));
        assert_eq!(a.expect(), ("pushedge".to_string(), want.clone()));
        assert_eq!(b.expect(), ("pushedge".to_string(), want.clone()));
        assert_eq!(named.expect(), ("f".to_string(), want.clone()));
        assert_eq!(sse.expect_event().data, want);
    }
}

#[test]
fn iframe_default_callback_is_configurable() {
    let s = Server::start(&["--set", "iframe_callback=cb2"]);
    let mut f = s.iframe("/iframe?channel=a");
    s.wait_subscribers("a", 1);
    s.publish("a", "x");
    assert_eq!(f.expect().0, "cb2");
}

#[test]
fn iframe_script_never_contains_a_closing_tag_from_content() {
    let s = Server::start(&[]);
    let mut f = s.iframe("/iframe?channel=a");
    s.wait_subscribers("a", 1);
    s.publish("a", "</script><script>alert(1)</script><!--");
    let chunk = loop {
        let c = f
            .conn
            .read_chunk(TIMEOUT)
            .unwrap()
            .expect("a chunk, not the end");
        let text = String::from_utf8(c).unwrap();
        if text.starts_with("<script>") {
            break text;
        }
    };
    assert_eq!(
        chunk.matches("</script>").count(),
        1,
        "only the wrapper closes the element: {chunk}"
    );
    assert!(
        !chunk[8..].contains("<!--") && !chunk[8..].contains("<script"),
        "{chunk}"
    );
}

#[test]
fn poll_and_sub_alias_answer_json_arrays() {
    let s = Server::start(&[]);
    s.publish("news", "one");
    for path in ["/poll", "/sub"] {
        let r = s.get(&format!("{path}?channel=news&seq=1"));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), json!([data(&s, "news", 1, "one")]), "{path}");
    }
}

#[test]
fn content_is_delivered_exactly_on_every_transport() {
    let s = Server::start(&[]);
    let content = "quote \" backslash \\ newline \n tab \t cr \r nul-ish \u{1} \u{1f} \
                   é ✓ 😀 </script> <!-- & \u{2028}\u{2029} {\"json\":[1]}";
    let mut ws = s.ws("/ws?channel=c");
    let mut sse = s.sse("/sse?channel=c");
    let mut st = s.stream("/stream?channel=c");
    let mut fr = s.iframe("/iframe?channel=c");
    s.wait_subscribers("c", 4);
    s.publish("c", content);
    let want = data(&s, "c", 1, content);
    assert_eq!(ws.recv_json(), want);
    assert_eq!(sse.expect_event().data, want);
    assert_eq!(st.expect(), want);
    assert_eq!(fr.expect().1, want);
    assert_eq!(s.get("/poll?channel=c&seq=1").json(), json!([want]));
    let jsonp = s.get("/poll?channel=c&seq=1&cb=f");
    let body = jsonp.text().trim_end();
    let inner = body.strip_prefix("f(").unwrap().strip_suffix(");").unwrap();
    assert_eq!(serde_json::from_str::<Value>(inner).unwrap(), json!([want]));
    // GET /pub?content= carries the same through percent-encoding.
    let r = s.admin_get(&format!("/pub?channel=c&content={}", urlencode(content)));
    assert_eq!(r.json()["seq"], 2);
    assert_eq!(ws.recv_json(), data(&s, "c", 2, content));
}

#[test]
fn echo_is_served_only_with_ws_echo() {
    let s = Server::start(&[]);
    match Ws::try_connect(s.addr, "/echo") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        Err(e) => panic!("expected 404, got {e}"),
        Ok(_) => panic!("/echo must not be served without ws_echo"),
    }
    let s = Server::start(&["--set", "ws_echo=true"]);
    let mut ws = s.ws("/echo");
    ws.send_text("hello, not JSON");
    assert_eq!(ws.recv(TIMEOUT), WsEvent::Other("hello, not JSON".into()));
    ws.ws
        .send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
        .unwrap();
    assert_eq!(ws.recv(TIMEOUT), WsEvent::Binary(vec![0, 1, 2, 255]));
    let big = "x".repeat(40_000);
    ws.send_text(&big);
    assert_eq!(ws.recv(TIMEOUT), WsEvent::Other(big));
}

#[test]
fn several_channels_on_one_connection() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=a,b,c");
    let mut sse = s.sse("/sse?channel=a,b,c");
    let mut st = s.stream("/stream?channel=a,b,c");
    let mut fr = s.iframe("/iframe?channel=a,b,c");
    for ch in ["a", "b", "c"] {
        s.wait_subscribers(ch, 4);
    }
    s.publish("b", "1");
    s.publish("a", "2");
    s.publish("c", "3");
    let want = [
        data(&s, "b", 1, "1"),
        data(&s, "a", 1, "2"),
        data(&s, "c", 1, "3"),
    ];
    for w in &want {
        assert_eq!(&ws.recv_json(), w);
        assert_eq!(&sse.expect_event().data, w);
        assert_eq!(&st.expect(), w);
        assert_eq!(&fr.expect().1, w);
    }
    // A long-poll on several channels answers with what any of them holds.
    let r = s.get("/poll?channel=a,c&seq=1");
    assert_eq!(
        r.json(),
        json!([data(&s, "a", 1, "2"), data(&s, "c", 1, "3")])
    );
}

#[test]
fn a_repeated_channel_is_one_subscription() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=a,a");
    s.wait_subscribers("a", 1);
    s.publish("a", "once");
    assert_eq!(ws.recv_json(), data(&s, "a", 1, "once"));
    ws.expect_quiet();
}

#[test]
fn one_publish_reaches_every_worker_once_in_order() {
    let s = Server::start(&["--workers", "2"]);
    assert_eq!(s.workers, 2);
    let mut ctl = s.ctl();
    let mut subs: Vec<Ws> = Vec::new();
    // Open connections until both workers hold some (the kernel spreads accepts).
    let spread = wait_for(TIMEOUT * 2, || {
        for _ in 0..8 {
            subs.push(s.ws("/ws?channel=fan"));
        }
        let conns = ctl.cmd("conns 1000");
        let ids: Vec<String> = conns["conns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        let w0 = ids.iter().filter(|i| i.starts_with("0:")).count();
        let w1 = ids.iter().filter(|i| i.starts_with("1:")).count();
        (w0 >= 2 && w1 >= 2).then_some((w0, w1))
    });
    assert!(
        spread.is_some(),
        "connections never spread over both workers"
    );
    let mut sse = s.sse("/sse?channel=fan");
    let mut st = s.stream("/stream?channel=fan");
    let n_subs = subs.len() as u64 + 2;
    s.wait_subscribers("fan", n_subs);
    const N: u64 = 50;
    for i in 1..=N {
        assert_eq!(s.publish("fan", &format!("m{i}")), i);
    }
    for (k, ws) in subs.iter_mut().enumerate() {
        let got: Vec<Value> = (0..N).map(|_| ws.recv_json()).collect();
        assert_eq!(seqs(&got), (1..=N).collect::<Vec<_>>(), "subscriber {k}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["content"], format!("m{}", i + 1));
        }
    }
    let sse_seqs: Vec<u64> = (0..N)
        .map(|_| sse.expect_event().data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(sse_seqs, (1..=N).collect::<Vec<_>>());
    let st_seqs: Vec<u64> = (0..N)
        .map(|_| st.expect()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(st_seqs, (1..=N).collect::<Vec<_>>());
    // Exactly once: nothing more arrives.
    for ws in subs.iter_mut().take(4) {
        ws.expect_quiet();
    }
    let info = s.channel_info("fan");
    assert_eq!(info["seq"], N);
    assert_eq!(info["subscribers"], n_subs);
}

#[test]
fn two_http_listeners_serve_the_same_channels() {
    let s = Server::start(&[
        "--set",
        r#"listener=[{addr="127.0.0.1:0",protocol="http"},{addr="127.0.0.1:0"}]"#,
    ]);
    let line = s
        .log()
        .lines()
        .find(|l| l.contains(" ready: "))
        .expect("the ready line")
        .to_string();
    let addrs: Vec<std::net::SocketAddr> = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listeners="))
        .unwrap_or_else(|| panic!("no listeners= in {line}"))
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{line}");
    assert_eq!(addrs[0], s.addr);
    assert_ne!(addrs[0].port(), addrs[1].port());
    let mut ws = Ws::connect(addrs[1], "/ws?channel=both");
    let mut sse = SseStream::open(addrs[0], "/sse?channel=both", &[]);
    assert_eq!(sse.head.status, 200);
    s.wait_subscribers("both", 2);
    let seq = s.publish("both", "to every listener");
    assert_eq!(ws.recv_json()["seq"], seq);
    assert_eq!(sse.expect_event().data["seq"], seq);
    for a in &addrs {
        let mut c = Conn::connect(*a);
        c.send_request("GET", "/ping", &[], b"", true);
        assert_eq!(c.read_response(TIMEOUT).unwrap().status, 200);
    }
}

#[test]
fn a_listener_with_an_unknown_protocol_is_refused() {
    let out = run_binary(&[
        "serve",
        "--set",
        r#"listener=[{addr="127.0.0.1:0",protocol="gopher"}]"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listener"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
