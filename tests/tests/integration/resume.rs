//! Resuming: `since=` on the streaming transports, SSE `Last-Event-ID`, long-poll `seq`,
//! and `gap` when the history no longer holds what was asked for.

use pushedge_tests::*;
use serde_json::Value;

/// A data message as `s` delivers it, with the channel's current epoch.
fn data(s: &Server, channel: &str, seq: u64, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "epoch": s.epoch(channel), "content": content})
}

fn gap(channel: &str, from: u64, to: u64) -> Value {
    json!({"type": "gap", "channel": channel, "from": from, "to": to})
}

#[test]
fn since_replays_then_goes_live_on_every_streaming_transport() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("r", &format!("m{i}"));
    }
    let mut ws = s.ws("/ws?channel=r&since=2");
    let mut sse = s.sse("/sse?channel=r&since=2");
    let mut st = s.stream("/stream?channel=r&since=2");
    let mut fr = s.iframe("/iframe?channel=r&since=2");
    for i in 2..=3 {
        let want = data(&s, "r", i, &format!("m{i}"));
        assert_eq!(ws.recv_json(), want);
        let e = sse.expect_event();
        assert_eq!(e.data, want);
        assert_eq!(e.id, Some(format!("r:{i}@{}", s.epoch("r"))));
        assert_eq!(st.expect(), want);
        assert_eq!(fr.expect().1, want);
    }
    s.wait_subscribers("r", 4);
    s.publish("r", "m4");
    let want = data(&s, "r", 4, "m4");
    assert_eq!(ws.recv_json(), want);
    assert_eq!(sse.expect_event().data, want);
    assert_eq!(st.expect(), want);
    assert_eq!(fr.expect().1, want);
    ws.expect_quiet();
}

#[test]
fn since_zero_or_one_replays_everything_buffered() {
    let s = Server::start(&[]);
    s.publish("r", "a");
    s.publish("r", "b");
    for since in [0, 1] {
        let mut ws = s.ws(&format!("/ws?channel=r&since={since}"));
        assert_eq!(
            seqs(&[ws.recv_json(), ws.recv_json()]),
            vec![1, 2],
            "since={since}"
        );
        ws.expect_quiet();
    }
}

#[test]
fn since_past_the_end_replays_nothing() {
    let s = Server::start(&[]);
    s.publish("r", "a");
    let mut ws = s.ws("/ws?channel=r&since=2");
    s.wait_subscribers("r", 1);
    ws.expect_quiet();
    s.publish("r", "b");
    assert_eq!(ws.recv_json(), data(&s, "r", 2, "b"));
}

#[test]
fn gap_when_history_no_longer_holds_the_start() {
    let s = Server::start(&["--set", "history_size=3"]);
    for i in 1..=5 {
        s.publish("g", &format!("m{i}"));
    }
    assert_eq!(s.channel_info("g")["buffered"], 3);
    let mut ws = s.ws("/ws?channel=g&since=1");
    let mut sse = s.sse("/sse?channel=g&since=1");
    let mut st = s.stream("/stream?channel=g&since=1");
    let mut fr = s.iframe("/iframe?channel=g&since=2");
    assert_eq!(ws.recv_json(), gap("g", 1, 2));
    assert_eq!(sse.expect_event().data, gap("g", 1, 2));
    assert_eq!(st.expect(), gap("g", 1, 2));
    assert_eq!(fr.expect().1, gap("g", 2, 2));
    for i in 3..=5 {
        let want = data(&s, "g", i, &format!("m{i}"));
        assert_eq!(ws.recv_json(), want);
        assert_eq!(sse.expect_event().data, want);
        assert_eq!(st.expect(), want);
        assert_eq!(fr.expect().1, want);
    }
    // Still inside the history: no gap.
    let mut ws = s.ws("/ws?channel=g&since=3");
    assert_eq!(ws.recv_json(), data(&s, "g", 3, "m3"));
    // Long-poll: the gap comes first in the array.
    let r = s.get("/poll?channel=g&seq=1");
    assert_eq!(
        r.json(),
        json!([
            gap("g", 1, 2),
            data(&s, "g", 3, "m3"),
            data(&s, "g", 4, "m4"),
            data(&s, "g", 5, "m5")
        ])
    );
}

#[test]
fn sse_last_event_id_resumes_every_channel_after_the_last_delivered_message() {
    let s = Server::start(&[]);
    let mut sse = s.sse("/sse?channel=a,b");
    s.wait_subscribers("a", 1);
    s.wait_subscribers("b", 1);
    s.publish("a", "a1");
    s.publish("b", "b1");
    s.publish("a", "a2");
    let ids: Vec<String> = (0..3).map(|_| sse.expect_event().id.unwrap()).collect();
    let (ea, eb) = (s.epoch("a"), s.epoch("b"));
    assert_eq!(
        ids,
        [
            // b was empty: a position in an empty stream carries no epoch.
            format!("a:1@{ea},b:0"),
            format!("a:1@{ea},b:1@{eb}"),
            format!("a:2@{ea},b:1@{eb}")
        ]
    );
    drop(sse);
    s.wait_subscribers("a", 0);
    // Missed while away.
    s.publish("a", "a3");
    s.publish("b", "b2");
    let mut sse = s.sse_with("/sse?channel=a,b", &[("Last-Event-ID", "a:2,b:1")]);
    let mut got: Vec<Value> = (0..2).map(|_| sse.expect_event().data).collect();
    got.sort_by_key(|m| m["channel"].as_str().unwrap().to_string());
    assert_eq!(got, vec![data(&s, "a", 3, "a3"), data(&s, "b", 2, "b2")]);
    s.wait_subscribers("b", 1);
    s.publish("a", "a4");
    let e = sse.expect_event();
    assert_eq!(e.data, data(&s, "a", 4, "a4"));
    assert_eq!(e.id, Some(format!("a:4@{ea},b:2@{eb}")));
    // Nothing was delivered twice.
    assert!(matches!(sse.next_event(QUIET), Err(ReadError::Timeout)));
}

#[test]
fn sse_last_event_id_takes_precedence_over_since_for_the_channels_it_names() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("a", &format!("a{i}"));
        s.publish("b", &format!("b{i}"));
    }
    // `a` resumes after 2 (cursor); `b` is not in the cursor and uses since=3.
    let mut sse = s.sse_with("/sse?channel=a,b&since=3", &[("Last-Event-ID", "a:2")]);
    assert_eq!(sse.expect_event().data, data(&s, "a", 3, "a3"));
    assert_eq!(sse.expect_event().data, data(&s, "b", 3, "b3"));
    assert!(matches!(sse.next_event(QUIET), Err(ReadError::Timeout)));
}

/// Every event id is a cursor that resumes *every* channel of the connection, also the ids
/// of events replayed while the connection is still subscribing to its later channels.
#[test]
fn sse_ids_during_replay_still_cover_every_channel() {
    let s = Server::start(&[]);
    s.publish("a", "a1");
    s.publish("b", "b1");
    s.publish("a", "a2");
    s.publish("a", "a3");
    s.publish("b", "b2");
    // Resume after a:2, b:1: a3 and b2 are due.
    let mut sse = s.sse_with("/sse?channel=a,b", &[("Last-Event-ID", "a:2,b:1")]);
    let first = sse.expect_event();
    assert_eq!(first.data, data(&s, "a", 3, "a3"));
    let id = first.id.expect("an id on every event");
    assert_eq!(
        id,
        format!("a:3@{},b:1@{}", s.epoch("a"), s.epoch("b")),
        "the id names every channel of the connection"
    );
    // The browser drops the connection right after that event and reconnects with it.
    drop(sse);
    let mut sse = s.sse_with("/sse?channel=a,b", &[("Last-Event-ID", &id)]);
    assert_eq!(sse.expect_event().data, data(&s, "b", 2, "b2"));
}

#[test]
fn poll_without_seq_answers_next_seq_at_once() {
    let s = Server::start(&[]);
    let r = s.get("/poll?channel=p");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([{"type": "next_seq", "channel": "p", "seq": 1}]),
        "a channel that does not exist has no epoch yet"
    );
    s.publish("p", "x");
    s.publish("p", "y");
    let r = s.get("/poll?channel=p,q");
    assert_eq!(
        r.json(),
        json!([
            {"type": "next_seq", "channel": "p", "seq": 3, "epoch": s.epoch("p")},
            {"type": "next_seq", "channel": "q", "seq": 1}
        ])
    );
}

#[test]
fn poll_answers_buffered_messages_at_once() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("p", &format!("m{i}"));
    }
    let r = s.get("/poll?channel=p&seq=2");
    assert_eq!(
        r.json(),
        json!([data(&s, "p", 2, "m2"), data(&s, "p", 3, "m3")])
    );
    let r = s.get("/sub?channel=p&seq=3");
    assert_eq!(r.json(), json!([data(&s, "p", 3, "m3")]));
    // An answered poll leaves no subscription behind.
    assert_eq!(s.channel_info("p")["subscribers"], 0);
}

#[test]
fn held_poll_is_answered_by_a_publish() {
    let s = Server::start(&[]);
    s.publish("p", "old");
    let mut c = s.connect();
    c.send_request("GET", "/poll?channel=p&seq=2", &[], b"", false);
    s.wait_subscribers("p", 1);
    assert_eq!(
        c.read_head(QUIET),
        Err(ReadError::Timeout),
        "the poll is held"
    );
    s.publish("p", "new");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([data(&s, "p", 2, "new")]));
    // Keep-alive: the next poll on the same connection is held too, then answered.
    c.send_request("GET", "/poll?channel=p&seq=3", &[], b"", false);
    s.wait_subscribers("p", 1);
    s.publish("p", "newer");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.json(), json!([data(&s, "p", 3, "newer")]));
    s.wait_subscribers("p", 0);
}

#[test]
fn held_poll_on_several_channels_is_answered_by_any() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send_request("GET", "/poll?channel=a,b&seq=1", &[], b"", true);
    s.wait_subscribers("a", 1);
    s.wait_subscribers("b", 1);
    s.publish("b", "hi");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.json(), json!([data(&s, "b", 1, "hi")]));
    s.wait_subscribers("a", 0);
}

#[test]
fn poll_timeout_answers_noop() {
    let s = Server::start(&["--set", "poll_timeout_secs=1"]);
    s.publish("p", "x");
    let mut c = s.connect();
    c.send_request("GET", "/poll?channel=p&seq=2", &[], b"", true);
    assert_eq!(c.read_head(QUIET), Err(ReadError::Timeout), "held first");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["type"], "noop", "{v}");
    assert_eq!(v[0]["channel"], "p", "{v}");
    assert_eq!(s.channel_info("p")["subscribers"], 0);
}

/// The `noop` of a timed-out poll carries the seq to ask for next (the one asked for).
#[test]
fn poll_timeout_noop_carries_the_asked_seq() {
    let s = Server::start(&["--set", "poll_timeout_secs=1"]);
    s.publish("p", "x");
    let mut c = s.connect();
    c.send_request("GET", "/poll?channel=p&seq=2", &[], b"", true);
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(
        r.json(),
        json!([{"type": "noop", "channel": "p", "seq": 2, "epoch": s.epoch("p")}])
    );
}

#[test]
fn jsonp_wraps_every_answer() {
    let s = Server::start(&["--set", "poll_timeout_secs=1"]);
    s.publish("p", "<hi>");
    let r = s.get("/poll?channel=p&seq=1&cb=my.handler");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/javascript"));
    let body = r.text().trim_end();
    let inner = body
        .strip_prefix("my.handler(")
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not JSONP: {body}"));
    assert!(!inner.contains('<'), "script-safe JSON: {inner}");
    assert_eq!(
        serde_json::from_str::<Value>(inner).unwrap(),
        json!([data(&s, "p", 1, "<hi>")])
    );
    let e = s.epoch("p");
    let r = s.get("/poll?channel=p&cb=f");
    assert_eq!(
        r.text().trim_end(),
        format!(r#"f([{{"type":"next_seq","channel":"p","seq":2,"epoch":"{e}"}}]);"#)
    );
    let r = s.get("/poll?channel=p&seq=2&cb=f");
    assert_eq!(
        r.text().trim_end(),
        format!(r#"f([{{"type":"noop","channel":"p","seq":2,"epoch":"{e}"}}]);"#)
    );
    // A held JSONP poll answered by a publish.
    let mut c = s.connect();
    c.send_request("GET", "/poll?channel=p&seq=2&cb=f", &[], b"", true);
    s.wait_subscribers("p", 1);
    s.publish("p", "two");
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(
        r.text().trim_end(),
        format!(r#"f([{{"type":"data","channel":"p","seq":2,"epoch":"{e}","content":"two"}}]);"#)
    );
}

#[test]
fn poll_cursor_loop_sees_every_message_once() {
    let s = Server::start(&[]);
    for i in 1..=4 {
        s.publish("loop", &format!("m{i}"));
    }
    let mut next = s.get("/poll?channel=loop").json()[0]["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(next, 5);
    next = 1;
    let mut seen = Vec::new();
    while next <= 4 {
        let r = s.get(&format!("/poll?channel=loop&seq={next}"));
        for m in r.json().as_array().unwrap() {
            let seq = m["seq"].as_u64().unwrap();
            seen.push(seq);
            next = seq + 1;
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4]);
}
