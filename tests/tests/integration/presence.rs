//! What chat and notification apps build on: ops that can be correlated (ids, `ok`s,
//! errors that name what they refuse), JSON content, a position per channel in URLs,
//! presence (members, join/leave) and user channels.

use pushedge_tests::*;
use serde_json::{json, Value};

const SECRET: &[u8] = b"t0ps3cret";

/// Nodes with tokens and presence on `chat.*`.
const CLUSTER_PRESENCE: [&str; 6] = [
    "--set",
    "auth=token",
    "--set",
    "token_secret=t0ps3cret",
    "--set",
    "presence=chat.*",
];

fn token(channels: &[&str], sub: &str) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"channels": channels, "sub": sub, "info": {"nick": sub.to_uppercase()}, "pub": ["chat.*"], "exp": unix_now() + 600}),
        SECRET,
    )
}

#[test]
fn every_op_answer_carries_its_id_and_a_sub_ok_comes_before_its_replay() {
    let s = Server::start(&["--set", "client_publish=*"]);
    for i in 1..=3 {
        s.publish("x", &format!("m{i}"));
    }
    let mut ws = s.ws("/ws");
    let ok = ws.op_ok(&json!({"op": "sub", "channel": "x", "since": 2, "id": "s1"}));
    assert_eq!(ok["seq"], 3, "where the stream was: {ok}");
    assert_eq!(ok["epoch"], s.epoch("x"));
    assert_eq!(ws.recv_json()["seq"], 2, "then the replay");
    assert_eq!(ws.recv_json()["seq"], 3);
    let ok = ws.op_ok(&json!({"op": "pub", "channel": "x", "content": "mine", "id": 7}));
    assert_eq!(ok["seq"], 4, "{ok}");
    assert_eq!(ws.recv_json()["content"], "mine");
    ws.send_json(&json!({"op": "ping", "id": [1, 2]}));
    assert_eq!(ws.recv_json(), json!({"type": "pong", "id": [1, 2]}));
    ws.op_ok(&json!({"op": "unsub", "channel": "x", "id": {"k": true}}));
    // An error names the op, the channel and the id.
    ws.send_json(&json!({"op": "unsub", "channel": "x", "id": 9}));
    let e = ws.recv_json();
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_u64(),
            e["op"].as_str(),
            e["channel"].as_str(),
            e["id"].as_u64()
        ),
        (Some("error"), Some(404), Some("unsub"), Some("x"), Some(9)),
        "{e}"
    );
    ws.send_json(&json!({"op": "sub", "channel": "bad name", "id": "b"}));
    let e = ws.recv_json();
    assert_eq!(
        (e["op"].as_str(), e["id"].as_str(), e["code"].as_u64()),
        (Some("sub"), Some("b"), Some(400)),
        "{e}"
    );
}

#[test]
fn content_may_be_any_json_value_on_every_transport() {
    let s = Server::start(&["--set", "client_publish=*"]);
    let mut ws = s.ws("/ws?channel=j");
    let mut sse = s.sse("/sse?channel=j");
    s.wait_subscribers("j", 2);
    let mut writer = s.ws("/ws");
    writer.op_ok(&json!({"op": "pub", "channel": "j", "content": {"a": [1, "</script>"]}}));
    writer.op_ok(&json!({"op": "pub", "channel": "j", "content": 5}));
    let r = s.admin(
        "POST",
        "/pub?channel=j",
        &[("Content-Type", "application/json")],
        br#"{"admin":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.admin(
        "POST",
        "/pub?channel=j",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    writer.op_ok(&json!({"op": "pub", "channel": "j", "content": "text"}));
    let want = [
        json!({"a": [1, "</script>"]}),
        json!(5),
        json!({"admin": true}),
        json!("text"),
    ];
    for w in &want {
        assert_eq!(&ws.recv_json()["content"], w);
        assert_eq!(&sse.expect_event().data["content"], w);
    }
    // In a <script> context (iframe, JSONP) the JSON is the same, escaped for it.
    let mut fr = s.iframe("/iframe?channel=j&since=1");
    let (_, v) = fr.expect();
    assert_eq!(v["content"], want[0]);
}

#[test]
fn each_channel_resumes_from_its_own_position() {
    let s = Server::start(&[]);
    for i in 1..=4 {
        s.publish("a", &format!("a{i}"));
        s.publish("b:x", &format!("b{i}"));
    }
    let seqs = |v: Vec<Value>| -> Vec<(String, u64)> {
        v.iter()
            .map(|m| {
                (
                    m["channel"].as_str().unwrap().to_string(),
                    m["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let want = vec![
        ("a".to_string(), 4),
        ("b:x".to_string(), 2),
        ("b:x".to_string(), 3),
        ("b:x".to_string(), 4),
    ];
    let mut ws = s.ws("/ws?channel=a,b:x&since=a:4,b:x:2");
    let got: Vec<Value> = (0..4).map(|_| ws.recv_json()).collect();
    assert_eq!(seqs(got), want);
    let mut sse = s.sse("/sse?channel=a,b:x&since=a:4,b:x:2");
    let got: Vec<Value> = (0..4).map(|_| sse.expect_event().data).collect();
    assert_eq!(seqs(got), want);
    let r = s.get("/poll?channel=a,b:x&seq=a:4,b:x:2");
    assert_eq!(seqs(r.json().as_array().unwrap().clone()), want);
    // A position for a channel that is not asked for, or one missing with several: 400.
    assert_eq!(s.get("/sse?channel=a&since=zz:1").status, 400);
    assert_eq!(s.get("/poll?channel=a,b:x&seq=a:1").status, 400);
}

#[test]
fn presence_lists_members_and_tells_joins_and_leaves() {
    let s = Server::start(&[
        "--set",
        "auth=token",
        "--set",
        "token_secret=t0ps3cret",
        "--set",
        "presence=chat.*",
        "--set",
        "presence_public=true",
    ]);
    let ann = token(&["chat.*"], "ann");
    let bob = token(&["chat.*"], "bob");
    let mut a1 = s.ws(&format!("/ws?channel=chat.room&token={ann}"));
    s.wait_subscribers("chat.room", 1);
    let b = s.ws(&format!("/ws?channel=chat.room&token={bob}"));
    let j = a1.recv_json();
    assert_eq!(
        j,
        json!({"type": "join", "channel": "chat.room", "member": {"sub": "bob", "info": {"nick": "BOB"}}}),
        "{j}"
    );
    // A second connection of ann is not a new member.
    let mut a2 = s.ws(&format!("/ws?channel=chat.room&token={ann}"));
    s.wait_subscribers("chat.room", 3);
    a2.send_json(&json!({"op": "presence", "channel": "chat.room", "id": 1}));
    let p = a2.recv_json();
    assert_eq!(p["type"], "presence", "{p}");
    assert_eq!(p["id"], 1);
    assert_eq!(p["count"], 2, "{p}");
    assert_eq!(
        p["members"],
        json!([{"sub": "ann", "info": {"nick": "ANN"}, "conns": 2}, {"sub": "bob", "info": {"nick": "BOB"}, "conns": 1}]),
        "{p}"
    );
    let r = s.get(&format!("/presence?channel=chat.room&token={ann}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["count"], 2);
    let r = s.admin_get("/presence?channel=chat.room");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["members"],
        p["members"],
        "the admin port lists the same"
    );
    assert_eq!(s.admin_get("/presence").status, 400);
    // bob leaves (his connection closes): everyone left is told, once.
    drop(b);
    s.wait_subscribers("chat.room", 2);
    let l = a1.recv_json();
    assert_eq!(
        l,
        json!({"type": "leave", "channel": "chat.room", "member": {"sub": "bob", "info": {"nick": "BOB"}}}),
        "{l}"
    );
    assert_eq!(a2.recv_json()["type"], "leave");
    // ann leaving one of two connections is not a leave; joins and leaves take no seq.
    drop(a2);
    s.wait_subscribers("chat.room", 1);
    s.publish("chat.room", "after");
    let d = a1.recv_json();
    assert_eq!(
        (d["type"].as_str(), d["seq"].as_u64()),
        (Some("data"), Some(1)),
        "{d}"
    );
    // Outside the patterns: the subscriber count only.
    let r = s.get(&format!(
        "/presence?channel=chat&token={}",
        token(&["chat"], "ann")
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tracked"], false, "{}", r.text());
}

#[test]
fn presence_on_the_subscriber_port_is_off_by_default_and_anonymous_members_are_connections() {
    let s = Server::start(&["--set", "presence=room"]);
    assert_eq!(s.get("/presence?channel=room").status, 404);
    let mut a = s.ws("/ws?channel=room");
    s.wait_subscribers("room", 1);
    let _b = s.ws("/ws?channel=room");
    let j = a.recv_json();
    assert_eq!(j["type"], "join", "{j}");
    assert!(
        j["member"]["sub"].as_str().unwrap().starts_with("anon:"),
        "{j}"
    );
    a.send_json(&json!({"op": "presence", "channel": "room"}));
    let e = a.recv_json();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(403)),
        "{e}"
    );
    // Long-polls are not members: a poll that is answered at once tells nobody.
    s.publish("room", "m1");
    let _ = a.recv_json();
    assert_eq!(s.get("/poll?channel=room&seq=1").status, 200);
    a.expect_quiet();
}

#[test]
fn user_channels_reach_one_user_on_every_device() {
    let s = Server::start(&[
        "--set",
        "auth=token",
        "--set",
        "token_secret=t0ps3cret",
        "--set",
        "user_channels=true",
    ]);
    let ann = token(&["news"], "ann");
    let bob = token(&["news"], "bob");
    let mut phone = s.ws(&format!("/ws?channel=news&token={ann}"));
    let mut laptop = s.sse(&format!("/sse?channel=news&token={ann}"));
    let mut other = s.ws(&format!("/ws?channel=news&token={bob}"));
    s.wait_subscribers("user:ann", 2);
    s.wait_subscribers("user:bob", 1);
    s.publish("user:ann", "just for ann");
    let r = s.admin_get("/info?user=ann");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["count"], 2, "{v}");
    let transports: Vec<&str> = v["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["transport"].as_str().unwrap())
        .collect();
    assert!(
        transports.contains(&"ws") && transports.contains(&"sse"),
        "{v}"
    );
    assert_eq!(s.admin_get("/info?user=nobody").json()["count"], 0);
    assert_eq!(phone.recv_json()["content"], "just for ann");
    assert_eq!(laptop.expect_event().data["content"], "just for ann");
    other.expect_quiet();
    // Without the key, no user channel.
    let plain = Server::start(&["--set", "auth=token", "--set", "token_secret=t0ps3cret"]);
    let _c = plain.ws(&format!("/ws?channel=news&token={ann}"));
    plain.wait_subscribers("news", 1);
    assert_eq!(plain.channel_info("user:ann")["subscribers"], 0);
}

#[test]
fn presence_is_cluster_wide_on_the_admin_port_and_a_dead_node_drops_out() {
    let redis = Redis::start();
    let args = CLUSTER_PRESENCE;
    let a = node(&redis.url(), "node-a", &args);
    let mut b = node(&redis.url(), "node-b", &args);
    let ann = token(&["chat.*"], "ann");
    let bob = token(&["chat.*"], "bob");
    let _a1 = a.ws(&format!("/ws?channel=chat.room&token={ann}"));
    let _b1 = b.ws(&format!("/ws?channel=chat.room&token={bob}"));
    let _b2 = b.ws(&format!("/ws?channel=chat.room&token={ann}"));
    let members = |s: &Server| s.admin_get("/presence?channel=chat.room").json();
    // Each node reports every second: both are listed by either, ann once with her two
    // connections (one per node).
    let want = json!([
        {"sub": "ann", "info": {"nick": "ANN"}, "conns": 2},
        {"sub": "bob", "info": {"nick": "BOB"}, "conns": 1}
    ]);
    for s in [&a, &b] {
        assert!(
            wait_until(TIMEOUT, || members(s)["members"] == want),
            "{}",
            members(s)
        );
    }
    // /info (and the dashboard) list the nodes Redis knows of.
    let node_state = |s: &Server, id: &str| -> Option<String> {
        s.info()["cluster"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == id)
            .and_then(|n| n["redis"].as_str().map(str::to_string))
    };
    assert!(
        wait_until(TIMEOUT, || node_state(&a, "node-b").as_deref()
            == Some("up")),
        "{}",
        a.info()
    );
    // Node B dies: its report expires with it.
    b.kill9();
    let want = json!([{"sub": "ann", "info": {"nick": "ANN"}, "conns": 1}]);
    assert!(
        wait_until(std::time::Duration::from_secs(15), || members(&a)
            ["members"]
            == want),
        "{}",
        members(&a)
    );
    assert_eq!(members(&a)["count"], 1);
    assert!(
        wait_until(std::time::Duration::from_secs(15), || node_state(
            &a, "node-b"
        )
        .as_deref()
            == Some("down")),
        "{}",
        a.info()
    );
    assert_eq!(node_state(&a, "node-a").as_deref(), Some("up"));
}

#[test]
fn a_client_that_stops_answering_leaves_at_its_heartbeat_timeout() {
    let s = Server::start(&[
        "--set",
        "presence=room",
        "--set",
        "heartbeat_secs=0.3",
        "--set",
        "pong_timeout_secs=0.3",
    ]);
    let mut watcher = s.ws("/ws?channel=room");
    s.wait_subscribers("room", 1);
    // A raw client answers no ping: as a crashed one, or one behind a dead link.
    let _stuck = RawWs::connect(s.addr, "/ws?channel=room");
    let j = watcher.recv_json();
    assert_eq!(j["type"], "join", "{j}");
    let l = watcher.recv_json_within(std::time::Duration::from_secs(5));
    assert_eq!(
        (l["type"].as_str(), &l["member"]),
        (Some("leave"), &j["member"]),
        "{l}"
    );
    assert_eq!(s.channel_info("room")["subscribers"], 1);
}

#[test]
fn joins_and_leaves_reach_subscribers_on_other_nodes() {
    let redis = Redis::start();
    let args = CLUSTER_PRESENCE;
    let a = node(&redis.url(), "node-a", &args);
    let b = node(&redis.url(), "node-b", &args);
    let ann = token(&["chat.*"], "ann");
    let bob = token(&["chat.*"], "bob");
    let mut on_a = a.ws(&format!("/ws?channel=chat.room&token={ann}"));
    a.wait_subscribers("chat.room", 1);
    let on_b = b.ws(&format!("/ws?channel=chat.room&token={bob}"));
    let j = on_a.recv_json();
    assert_eq!(
        j,
        json!({"type": "join", "channel": "chat.room", "member": {"sub": "bob", "info": {"nick": "BOB"}}}),
        "{j}"
    );
    drop(on_b);
    let l = on_a.recv_json();
    assert_eq!(l["type"], "leave", "{l}");
    assert_eq!(l["member"]["sub"], "bob", "{l}");
}
