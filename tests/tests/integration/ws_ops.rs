//! WebSocket client operations: sub (with since), unsub, ping, pub (only where
//! `client_publish` allows), and errors that keep the connection open.

use pushedge_tests::*;
use serde_json::Value;

/// A data message as `s` delivers it, with the channel's current epoch.
fn data(s: &Server, channel: &str, seq: u64, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "epoch": s.epoch(channel), "content": content})
}

fn assert_error(v: &Value, code: u16) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

#[test]
fn sub_op_with_since_replays_then_goes_live() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("x", &format!("m{i}"));
    }
    let mut ws = s.ws("/ws");
    ws.op_ok(&json!({"op": "sub", "channel": "x", "since": 2}));
    assert_eq!(ws.recv_json(), data(&s, "x", 2, "m2"));
    assert_eq!(ws.recv_json(), data(&s, "x", 3, "m3"));
    s.wait_subscribers("x", 1);
    s.publish("x", "m4");
    assert_eq!(ws.recv_json(), data(&s, "x", 4, "m4"));
}

#[test]
fn sub_op_without_since_gets_new_messages_only() {
    let s = Server::start(&[]);
    s.publish("x", "old");
    let mut ws = s.ws("/ws?channel=first");
    ws.op_ok(&json!({"op": "sub", "channel": "x"}));
    s.wait_subscribers("x", 1);
    s.publish("x", "new");
    s.publish("first", "f");
    assert_eq!(ws.recv_json(), data(&s, "x", 2, "new"));
    assert_eq!(ws.recv_json(), data(&s, "first", 1, "f"));
}

#[test]
fn sub_twice_is_an_error_and_delivery_goes_on() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=x");
    ws.send_json(&json!({"op": "sub", "channel": "x"}));
    assert_error(&ws.recv_json(), 409);
    s.wait_subscribers("x", 1);
    s.publish("x", "once");
    assert_eq!(ws.recv_json(), data(&s, "x", 1, "once"));
    ws.expect_quiet();
}

#[test]
fn unsub_stops_delivery() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=a,b");
    s.wait_subscribers("a", 1);
    ws.op_ok(&json!({"op": "unsub", "channel": "a"}));
    s.wait_subscribers("a", 0);
    s.publish("a", "gone");
    s.publish("b", "still");
    assert_eq!(ws.recv_json(), data(&s, "b", 1, "still"));
    ws.send_json(&json!({"op": "unsub", "channel": "a"}));
    assert_error(&ws.recv_json(), 404);
    // Subscribing again works.
    ws.op_ok(&json!({"op": "sub", "channel": "a"}));
    s.wait_subscribers("a", 1);
    s.publish("a", "back");
    assert_eq!(ws.recv_json(), data(&s, "a", 2, "back"));
}

#[test]
fn ping_op_answers_pong() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws");
    ws.send_json(&json!({"op": "ping"}));
    assert_eq!(ws.recv_json(), json!({"type": "pong"}));
}

#[test]
fn pub_is_allowed_only_for_client_publish_patterns() {
    let s = Server::start(&["--set", "client_publish=chat.*,room:*:public"]);
    let mut reader = s.ws("/ws?channel=chat.lobby");
    let mut writer = s.ws("/ws");
    s.wait_subscribers("chat.lobby", 1);
    writer.send_json(&json!({"op": "pub", "channel": "chat.lobby", "content": "hi \"all\""}));
    assert_eq!(
        writer.recv_json(),
        json!({"type": "ok", "op": "pub", "channel": "chat.lobby", "seq": 1, "epoch": s.epoch("chat.lobby")})
    );
    assert_eq!(reader.recv_json(), data(&s, "chat.lobby", 1, "hi \"all\""));
    writer.send_json(&json!({"op": "pub", "channel": "room:7:public", "content": "r"}));
    assert_eq!(writer.recv_json()["type"], "ok");
    for channel in ["news", "chat", "room:7:private"] {
        writer.send_json(&json!({"op": "pub", "channel": channel, "content": "no"}));
        assert_error(&writer.recv_json(), 403);
    }
    assert_eq!(s.channel_info("news")["seq"], 0, "nothing was published");
    // The connection is still usable.
    writer.send_json(&json!({"op": "ping"}));
    assert_eq!(writer.recv_json(), json!({"type": "pong"}));
    assert_eq!(s.metric("pushedge_client_publishes_total"), 2.0);
}

#[test]
fn pub_is_refused_without_client_publish() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws");
    ws.send_json(&json!({"op": "pub", "channel": "anything", "content": "x"}));
    assert_error(&ws.recv_json(), 403);
}

#[test]
fn a_message_over_max_message_bytes_is_skipped_with_an_error_or_closes_1009_when_fragmented() {
    let s = Server::start(&[
        "--set",
        "client_publish=*",
        "--set",
        "max_message_bytes=1000",
    ]);
    let mut ws = s.ws("/ws?channel=keep");
    // The op frame carries the content, so the frame limit is what a client meets first:
    // one frame over it is read through and dropped, with an error; the connection goes on.
    let content = "y".repeat(990);
    ws.send_json(&json!({"op": "pub", "channel": "c", "content": content, "id": 1}));
    let e = ws.recv_json();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(413)),
        "{e}"
    );
    assert_eq!(s.channel_info("c")["seq"], 0);
    s.wait_subscribers("keep", 1);
    s.publish("keep", "still here");
    assert_eq!(ws.recv_json()["content"], "still here");
    // A fragmented message cannot be skipped cleanly: over the limit, 1009.
    let mut raw = RawWs::connect(s.addr, "/ws");
    raw.send_frame(false, 0, 0x1, true, &[b'x'; 600]);
    raw.send_frame(true, 0, 0x0, true, &[b'x'; 600]);
    assert_eq!(raw.recv_close(TIMEOUT).map(|c| c.0), Some(1009));
    // Just under the limit is fine.
    let mut ws = s.ws("/ws");
    let content = "y".repeat(900);
    ws.send_json(&json!({"op": "pub", "channel": "c", "content": content}));
    assert_eq!(
        ws.recv_json(),
        json!({"type": "ok", "op": "pub", "channel": "c", "seq": 1, "epoch": s.epoch("c")})
    );
}

#[test]
fn bad_ops_get_errors_and_keep_the_connection_open() {
    let s = Server::start(&["--set", "client_publish=*"]);
    let mut ws = s.ws("/ws?channel=keep");
    for bad in [
        "not json",
        "[1,2]",
        "{}",
        r#"{"op":"dance"}"#,
        r#"{"op":"sub"}"#,
        r#"{"op":"sub","channel":"bad name"}"#,
        r#"{"op":"sub","channel":"x","since":-1}"#,
        r#"{"op":"sub","channel":"x","since":"1@NOT-AN-EPOCH"}"#,
        r#"{"op":"sub","channel":"x","since":true}"#,
        r#"{"op":"unsub"}"#,
        r#"{"op":"pub","channel":"keep"}"#,
        r#"{"op":"pub","content":"x"}"#,
        r#"{"op":"pub","channel":"a b","content":"x"}"#,
    ] {
        ws.send_text(bad);
        match ws.recv(TIMEOUT) {
            WsEvent::Json(v) => {
                assert_eq!(v["type"], "error", "{bad}: {v}");
                let code = v["code"].as_u64().unwrap();
                assert!((400..500).contains(&code), "{bad}: {v}");
            }
            other => panic!("{bad}: expected an error message, got {other:?}"),
        }
    }
    s.wait_subscribers("keep", 1);
    s.publish("keep", "alive");
    assert_eq!(ws.recv_json(), data(&s, "keep", 1, "alive"));
    ws.send_json(&json!({"op": "ping"}));
    assert_eq!(ws.recv_json(), json!({"type": "pong"}));
}

#[test]
fn max_channels_per_conn_is_enforced() {
    let s = Server::start(&["--set", "max_channels_per_conn=2"]);
    match Ws::try_connect(s.addr, "/ws?channel=a,b,c") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        Err(e) => panic!("expected 400, got {e}"),
        Ok(_) => panic!("three channels must be refused"),
    }
    assert_eq!(s.get("/sse?channel=a,b,c").status, 400);
    let mut ws = s.ws("/ws?channel=a,b");
    ws.send_json(&json!({"op": "sub", "channel": "c"}));
    assert_error(&ws.recv_json(), 400);
    ws.op_ok(&json!({"op": "unsub", "channel": "a"}));
    ws.op_ok(&json!({"op": "sub", "channel": "c"}));
    s.wait_subscribers("c", 1);
    s.publish("c", "ok");
    assert_eq!(ws.recv_json(), data(&s, "c", 1, "ok"));
}

#[test]
fn client_close_is_answered_and_unsubscribes() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=x");
    s.wait_subscribers("x", 1);
    ws.ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
    assert_eq!(ws.recv_close(TIMEOUT), Some(1000));
    s.wait_subscribers("x", 0);
    assert!(wait_until(TIMEOUT, || s.info()["connections"] == 0));
}
