//! HTTP/1.1 details (RFC 9110, RFC 9112) on both ports: `Host`, absolute-form targets,
//! `HEAD` without a body, `Expect: 100-continue`, framing checked before routing.

use pushedge_tests::*;

fn raw(addr: std::net::SocketAddr, req: &[u8]) -> Response {
    let mut c = Conn::connect(addr);
    c.send(req).unwrap();
    c.read_response(TIMEOUT).expect("an answer")
}

#[test]
fn host_is_required_and_single_on_http11() {
    let s = Server::start(&[]);
    for addr in [s.addr, s.admin_addr] {
        let path = if addr == s.addr { "/ping" } else { "/info" };
        let none = format!("GET {path} HTTP/1.1\r\n\r\n");
        assert_eq!(raw(addr, none.as_bytes()).status, 400, "no Host on {addr}");
        let two = format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!(raw(addr, two.as_bytes()).status, 400, "two Hosts on {addr}");
        let bad = format!("GET {path} HTTP/1.1\r\nHost: a b/c\r\n\r\n");
        assert_eq!(
            raw(addr, bad.as_bytes()).status,
            400,
            "a bad Host on {addr}"
        );
        let ok = format!("GET {path} HTTP/1.1\r\nHost: [::1]:8100\r\n\r\n");
        assert_eq!(raw(addr, ok.as_bytes()).status, 200, "Host on {addr}");
        // HTTP/1.0 may leave it out.
        let old = format!("GET {path} HTTP/1.0\r\n\r\n");
        assert_eq!(raw(addr, old.as_bytes()).status, 200, "HTTP/1.0 on {addr}");
    }
}

#[test]
fn absolute_form_targets_are_accepted() {
    let s = Server::start(&[]);
    let req = format!("GET http://{}/ping HTTP/1.1\r\nHost: x\r\n\r\n", s.addr);
    let r = raw(s.addr, req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let req = format!(
        "GET HTTP://{}/info?channel=c HTTP/1.1\r\nHost: x\r\n\r\n",
        s.admin_addr
    );
    let r = raw(s.admin_addr, req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["channel"], "c", "{}", r.text());
}

#[test]
fn head_on_the_admin_port_has_no_body_and_keeps_the_connection() {
    let s = Server::start(&[]);
    let mut c = Conn::connect(s.admin_addr);
    c.send(b"HEAD /info HTTP/1.1\r\nHost: x\r\n\r\nGET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = c.read_head(TIMEOUT).expect("the HEAD's answer");
    assert_eq!(head.status, 200);
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(len > 0, "the length the body would have");
    // No body follows: the next bytes are the GET's answer.
    let next = c.read_response(TIMEOUT).expect("the GET's answer");
    assert_eq!(next.status, 200);
    assert_eq!(next.body.len(), len);
}

#[test]
fn expect_100_continue_is_answered_on_the_admin_port() {
    let s = Server::start(&[]);
    let mut c = Conn::connect(s.admin_addr);
    c.send(b"POST /pub?channel=e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let interim = c.take_until(b"\r\n\r\n", TIMEOUT).expect("100 Continue");
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    c.send(b"hello").unwrap();
    let r = c.read_response(TIMEOUT).expect("the answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.channel_info("e")["seq"], 1);
}

#[test]
fn framing_is_checked_before_routing() {
    let s = Server::start(&[]);
    for path in ["/ws", "/nosuch", "/ping"] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        );
        assert_eq!(raw(s.addr, req.as_bytes()).status, 400, "{path}");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(raw(s.addr, req.as_bytes()).status, 400, "{path}");
    }
}
