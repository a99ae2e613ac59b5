//! `auth = "token"`: subscribers need an HS256 JWT granting their channels. Refusals are
//! 401 on the HTTP transports and close 1008 on WebSocket.

use pushedge_tests::*;
use serde_json::Value;

const SECRET: &[u8] = b"t0ps3cret";
/// The secret first: see `cli::set_order_does_not_matter` for the other order.
const AUTH: [&str; 4] = ["--set", "token_secret=t0ps3cret", "--set", "auth=token"];

/// Asserts that every transport refuses `token` (appended as `&token=`) for `channels`.
fn assert_refused(s: &Server, channels: &str, token: Option<&str>, why: &str) {
    let t = token
        .map(|t| format!("&token={}", urlencode(t)))
        .unwrap_or_default();
    for path in ["/sse", "/stream", "/iframe", "/poll", "/sub"] {
        let target = format!("{path}?channel={channels}{t}");
        let r = s.get(&target);
        assert_eq!(r.status, 401, "{why}: GET {target}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{why}: {path}"
        );
        let v = r.json();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_u64()),
            (Some("error"), Some(401)),
            "{v}"
        );
    }
    let r = s.get(&format!("/poll?channel={channels}&seq=1{t}"));
    assert_eq!(r.status, 401, "{why}: poll with seq");
    let mut ws = s.ws(&format!("/ws?channel={channels}{t}"));
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008), "{why}: WebSocket");
}

#[test]
fn missing_token_is_refused() {
    let s = Server::start(&AUTH);
    assert_refused(&s, "c", None, "no token");
    assert_refused(&s, "c", Some(""), "empty token");
    // Endpoints without channels need nothing.
    assert_eq!(s.get("/ping").status, 200);
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.channel_info("c")["subscribers"], 0);
}

#[test]
fn malformed_tokens_are_refused() {
    let s = Server::start(&AUTH);
    for t in ["garbage", "a.b.c", "a.b", "....", &"x".repeat(5000)] {
        assert_refused(&s, "c", Some(t), t);
    }
}

#[test]
fn expired_token_is_refused() {
    let s = Server::start(&AUTH);
    let t = token_for(&["c"], unix_now() - 10, SECRET);
    assert_refused(&s, "c", Some(&t), "expired");
    let no_exp = jwt(
        &json!({"alg": "HS256"}),
        &json!({"channels": ["c"]}),
        SECRET,
    );
    assert_refused(&s, "c", Some(&no_exp), "no exp");
}

#[test]
fn other_algorithms_and_bad_signatures_are_refused() {
    let s = Server::start(&AUTH);
    let claims = json!({"channels": ["c"], "exp": unix_now() + 600});
    // alg=none with an empty signature.
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
            b64.encode(claims.to_string())
        )
    };
    assert_refused(&s, "c", Some(&none), "alg=none");
    // Other algorithm names, even with a valid HMAC over the parts.
    for alg in ["HS512", "RS256", "hs256"] {
        let t = jwt(&json!({"alg": alg}), &claims, SECRET);
        assert_refused(&s, "c", Some(&t), alg);
    }
    let t = jwt(&json!({"alg": "HS256"}), &claims, b"wrong secret");
    assert_refused(&s, "c", Some(&t), "wrong secret");
    // A valid token whose claims were changed after signing.
    let good = token_for(&["c"], unix_now() + 600, SECRET);
    let parts: Vec<&str> = good.split('.').collect();
    let other_claims = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"channels": ["*"], "exp": unix_now() + 600}).to_string())
    };
    let tampered = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    assert_refused(&s, "c", Some(&tampered), "tampered claims");
}

#[test]
fn token_for_another_channel_is_refused() {
    let s = Server::start(&AUTH);
    let t = token_for(&["other"], unix_now() + 600, SECRET);
    assert_refused(&s, "c", Some(&t), "wrong channel");
    // Every channel of the request must be granted.
    let t = token_for(&["c"], unix_now() + 600, SECRET);
    assert_refused(&s, "c,d", Some(&t), "one of two channels");
}

#[test]
fn a_token_from_sign_works_on_every_transport() {
    let s = Server::start(&AUTH);
    let r = s.admin_get("/sign?channel=news&ttl=600");
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let q = format!("channel=news&token={}", urlencode(&token));
    let mut ws = s.ws(&format!("/ws?{q}"));
    let mut sse = s.sse(&format!("/sse?{q}"));
    let mut st = s.stream(&format!("/stream?{q}"));
    let mut fr = s.iframe(&format!("/iframe?{q}"));
    s.wait_subscribers("news", 4);
    s.publish("news", "granted");
    let want = json!({"type": "data", "channel": "news", "seq": 1, "epoch": s.epoch("news"), "content": "granted"});
    assert_eq!(ws.recv_json(), want);
    assert_eq!(sse.expect_event().data, want);
    assert_eq!(st.expect(), want);
    assert_eq!(fr.expect().1, want);
    let r = s.get(&format!("/poll?{q}&seq=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([want]));
    assert_eq!(s.get(&format!("/poll?{q}")).status, 200);
}

#[test]
fn pattern_and_single_channel_claims() {
    let s = Server::start(&AUTH);
    let r = s.admin_get("/sign?channel=chat.*,news");
    let token = r.json()["token"].as_str().unwrap().to_string();
    let t = urlencode(&token);
    assert_eq!(
        s.get(&format!("/poll?channel=chat.room1,news&token={t}"))
            .status,
        200
    );
    assert_eq!(
        s.get(&format!("/poll?channel=chatroom&token={t}")).status,
        401
    );
    let single = jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"channel": "solo", "exp": unix_now() + 60}),
        SECRET,
    );
    let t = urlencode(&single);
    assert_eq!(s.get(&format!("/poll?channel=solo&token={t}")).status, 200);
    assert_eq!(s.get(&format!("/poll?channel=solo2&token={t}")).status, 401);
}

#[test]
fn websocket_sub_op_is_limited_to_the_grant() {
    let s = Server::start(&AUTH);
    let token = token_for(&["a", "b.*"], unix_now() + 600, SECRET);
    let mut ws = s.ws(&format!("/ws?channel=a&token={}", urlencode(&token)));
    ws.send_json(&json!({"op": "sub", "channel": "secret"}));
    let v: Value = ws.recv_json();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403)),
        "{v}"
    );
    ws.op_ok(&json!({"op": "sub", "channel": "b.x"}));
    s.wait_subscribers("b.x", 1);
    s.publish("secret", "no");
    s.publish("b.x", "yes");
    assert_eq!(ws.recv_json()["content"], "yes");
    assert_eq!(s.channel_info("secret")["subscribers"], 0);
}

#[test]
fn refusals_are_counted() {
    let s = Server::start(&AUTH);
    assert_eq!(s.get("/sse?channel=c").status, 401);
    let mut ws = s.ws("/ws?channel=c");
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008));
    assert!(s.metric("pushedge_protocol_errors_total{kind=\"http_401\"}") >= 2.0);
}
