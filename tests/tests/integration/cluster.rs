//! Clustering through Redis (issue 6), against a real `redis-server` started per test (see
//! `tests/src/redis.rs`; no mocks): delivery across nodes with cluster-wide seqs, resuming
//! on another node, cluster-wide `/info`, a Redis outage and restart, and a node killed with
//! SIGKILL while its clients move to the node that shares its port. Then the paths around
//! them: resumes during a publish storm (history and feed overlap), a node cut off longer
//! than the history (`gap`), feeds cut while publishing goes on, a Redis that lost its
//! data, `close` across nodes, and `cluster.prefix` / `cluster.key_ttl_secs`.
//!
//! A node is cut off from Redis on its own by putting a [`Gate`] (a TCP relay the test can
//! close) between them; `CLIENT KILL TYPE pubsub` cuts only the feeds.
//!
//! Every test has its own Redis and nodes, so they run in parallel with the rest (the
//! group takes about 10 s of wall time, the longest test about 7 s: a dead node's counts
//! expire after 5 s). They need `redis-server` (`make deps-test` installs it); without it
//! they fail and say so.

use pushedge_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

fn data(channel: &str, seq: u64, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "content": content})
}

fn gap(channel: &str, from: u64, to: u64) -> Value {
    json!({"type": "gap", "channel": channel, "from": from, "to": to})
}

/// Waits until `node` itself has `n` subscribers to `channel` (`local_subscribers` of
/// `/info?channel=`), so that what is published next reaches them.
fn wait_local(node: &Server, channel: &str, n: u64) {
    let ok = wait_until(TIMEOUT, || {
        node.channel_info(channel)["local_subscribers"].as_u64() == Some(n)
    });
    assert!(
        ok,
        "{channel} never had {n} local subscribers: {}",
        node.channel_info(channel)
    );
}

/// Waits until `/info?channel=` on `node` reports `n` subscribers across the cluster.
fn wait_cluster_subscribers(node: &Server, channel: &str, n: u64, within: Duration) {
    let ok = wait_until(within, || {
        node.channel_info(channel)["subscribers"].as_u64() == Some(n)
    });
    assert!(
        ok,
        "{channel} never had {n} subscribers across the cluster within {within:?}: {}",
        node.channel_info(channel)
    );
}

/// Publishes through `POST /pub`, retrying while the node answers 503 (Redis coming back,
/// reconnect backoff) for at most `within`; returns the seq.
fn publish_retry(node: &Server, channel: &str, content: &str, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let r = node.admin_post(&format!("/pub?channel={channel}"), content.as_bytes());
        match r.status {
            200 => {
                let v = r.json();
                assert_eq!(v["type"], "ok", "{v}");
                return v["seq"].as_u64().expect("seq");
            }
            503 if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            _ => panic!(
                "publish {content:?} to {channel}: {} {}",
                r.status,
                r.text()
            ),
        }
    }
}

/// Publishes through the control socket's `pub`; returns the seq.
fn ctl_publish(ctl: &mut Ctl, channel: &str, content: &str) -> u64 {
    let v = ctl.cmd(&format!("pub {channel} {content}"));
    assert_eq!(v["type"], "ok", "{v}");
    assert_eq!(v["channel"], channel, "{v}");
    v["seq"].as_u64().expect("seq")
}

/// Asserts a 503 publish answer with a reason.
fn assert_unavailable(v: &Value) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], 503, "{v}");
    assert!(
        v["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "503 without a reason: {v}"
    );
}

// ------------------------------------------------------------------------------ subscribers

/// What a subscriber read produced.
#[derive(Debug)]
enum Got {
    Msg(Value),
    Ended(String),
    Timeout,
}

/// A WebSocket or SSE subscriber, read the same way.
enum Sub {
    Ws(Ws),
    /// The stream and the id of the last event read.
    Sse(SseStream, Option<String>),
}

impl Sub {
    fn ws(addr: SocketAddr, target: &str) -> Sub {
        Sub::Ws(Ws::connect(addr, target))
    }

    fn sse(addr: SocketAddr, target: &str, last_event_id: Option<&str>) -> Sub {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("Last-Event-ID", id))
            .into_iter()
            .collect();
        let s = SseStream::open(addr, target, &headers);
        assert_eq!(s.head.status, 200, "GET {target}: {:?}", s.head);
        Sub::Sse(s, None)
    }

    fn name(&self) -> &'static str {
        match self {
            Sub::Ws(_) => "ws",
            Sub::Sse(..) => "sse",
        }
    }

    /// The next message (pings and comments skipped).
    fn next(&mut self, timeout: Duration) -> Got {
        match self {
            Sub::Ws(ws) => {
                let deadline = Instant::now() + timeout;
                loop {
                    match ws.recv(deadline.saturating_duration_since(Instant::now())) {
                        WsEvent::Ping => continue,
                        WsEvent::Json(v) => return Got::Msg(no_epoch(v)),
                        WsEvent::Timeout => return Got::Timeout,
                        WsEvent::Close(c) => return Got::Ended(format!("close frame {c:?}")),
                        WsEvent::Ended(e) => return Got::Ended(e),
                        other => panic!("unexpected WebSocket event {other:?}"),
                    }
                }
            }
            Sub::Sse(s, last) => match s.next_event(timeout) {
                Ok(e) => {
                    if e.id.is_some() {
                        *last = e.id;
                    }
                    Got::Msg(no_epoch(e.data))
                }
                Err(ReadError::Timeout) => Got::Timeout,
                Err(ReadError::Closed) => Got::Ended("stream closed".into()),
                Err(e) => panic!("bad SSE input: {e:?}"),
            },
        }
    }

    /// The id of the last SSE event read, without its epochs (checked).
    fn last_seqs(&self) -> Option<String> {
        self.last_id().map(|id| no_epochs_in_cursor(&id))
    }

    /// The id of the last SSE event read.
    fn last_id(&self) -> Option<String> {
        match self {
            Sub::Ws(_) => None,
            Sub::Sse(_, id) => id.clone(),
        }
    }

    /// Reads messages until one at or past `last` (its `seq`, or a gap's `to`); panics
    /// with what came when the stream ends or `timeout` passes first.
    fn read_through(&mut self, last: u64, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Msg(v) => {
                    let at = v["seq"].as_u64().or(v["to"].as_u64()).unwrap_or(0);
                    got.push(v);
                    if at >= last {
                        return got;
                    }
                }
                Got::Ended(why) => panic!(
                    "{}: the connection ended ({why}) before seq {last}; got {}",
                    self.name(),
                    Value::from(got)
                ),
                Got::Timeout => panic!(
                    "{}: nothing more within {timeout:?} before seq {last}; got {}",
                    self.name(),
                    Value::from(got)
                ),
            }
        }
    }

    /// Reads what arrives until nothing more comes for `QUIET`; panics if the connection
    /// ends.
    fn read_available(&mut self) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            match self.next(QUIET) {
                Got::Msg(v) => got.push(v),
                Got::Timeout => return got,
                Got::Ended(why) => panic!(
                    "{}: the connection ended ({why}); got {}",
                    self.name(),
                    Value::from(got)
                ),
            }
        }
    }

    /// Reads what comes until the connection ends (panics after `timeout`).
    fn read_to_end(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Msg(v) => got.push(v),
                Got::Ended(_) => return got,
                Got::Timeout => panic!(
                    "{}: still open after {timeout:?}; got {}",
                    self.name(),
                    Value::from(got)
                ),
            }
        }
    }

    /// Asserts that nothing arrives (and the connection stays open) for `QUIET`.
    fn expect_quiet(&mut self) {
        match self.next(QUIET) {
            Got::Timeout => {}
            other => panic!("{}: expected nothing, got {other:?}", self.name()),
        }
    }
}

// ------------------------------------------------------------------------------ tests

/// Subscribers on both nodes (WebSocket and SSE) get every message once and in order,
/// whichever node (admin POST, admin GET, control socket) it was published through, with
/// seqs counted across the cluster.
#[test]
fn messages_published_on_any_node_reach_subscribers_on_every_node() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let mut subs = vec![
        Sub::ws(a.addr, "/ws?channel=news"),
        Sub::sse(a.addr, "/sse?channel=news", None),
        Sub::ws(b.addr, "/ws?channel=news"),
        Sub::sse(b.addr, "/sse?channel=news", None),
    ];
    wait_local(&a, "news", 2);
    wait_local(&b, "news", 2);
    let mut ctl = b.ctl();
    let mut sent = Vec::new();
    for i in 1..=9u64 {
        let (seq, content) = match i % 3 {
            1 => {
                let c = format!("m{i} via a: \"quoted\" é ✓\nsecond line");
                (a.publish("news", &c), c)
            }
            2 => {
                let c = format!("m{i} via b");
                (b.publish("news", &c), c)
            }
            _ => {
                let c = format!("m{i} via b's control socket");
                (ctl_publish(&mut ctl, "news", &c), c)
            }
        };
        assert_eq!(seq, i, "seqs count across the cluster");
        sent.push(data("news", seq, &content));
    }
    // iComet-style GET /pub on A.
    let r = a.admin_get("/pub?channel=news&content=m10%20via%20a%20GET");
    assert_eq!(
        r.json(),
        json!({"type": "ok", "channel": "news", "seq": 10, "epoch": a.epoch("news")}),
        "{}",
        r.text()
    );
    assert_eq!(a.epoch("news"), b.epoch("news"), "one stream on every node");
    sent.push(data("news", 10, "m10 via a GET"));
    for sub in &mut subs {
        assert_eq!(sub.read_through(10, TIMEOUT), sent, "{}", sub.name());
    }
    for sub in &mut subs {
        sub.expect_quiet();
    }
    // Publishers on both nodes at once: still one order, the seq order, everywhere.
    let mut sent: Vec<(u64, String)> = thread::scope(|scope| {
        let publishers: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(n, node)| {
                scope.spawn(move || {
                    (0..40)
                        .map(|i| {
                            let c = format!("burst {i} via {}", ["a", "b"][n]);
                            (node.publish("news", &c), c)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        publishers
            .into_iter()
            .flat_map(|p| p.join().expect("publisher"))
            .collect()
    });
    sent.sort();
    let want: Vec<Value> = sent.iter().map(|(seq, c)| data("news", *seq, c)).collect();
    assert_eq!(seqs(&want), (11..=90).collect::<Vec<u64>>(), "one seq each");
    for sub in &mut subs {
        assert_eq!(sub.read_through(90, TIMEOUT), want, "{}", sub.name());
        sub.expect_quiet();
    }
    // Another channel has its own counter.
    let mut other = Sub::ws(a.addr, "/ws?channel=sport");
    wait_local(&a, "sport", 1);
    assert_eq!(ctl_publish(&mut ctl, "sport", "goal"), 1);
    assert_eq!(
        other.read_through(1, TIMEOUT),
        vec![data("sport", 1, "goal")]
    );
    for n in [&a, &b] {
        let v = n.channel_info("news");
        assert_eq!(
            (v["seq"].as_u64(), v["buffered"].as_u64()),
            (Some(90), Some(64)),
            "{v}"
        );
    }
}

/// A client resumes on another node than the one it left, with SSE `Last-Event-ID`,
/// WebSocket `since=` and long-poll `seq=`, and gets exactly what it missed (a `gap` where
/// the history, `history_size=3`, no longer holds it). Node B starts after the first
/// messages: it never saw them, so what it replays comes from Redis.
#[test]
fn clients_resume_on_another_node() {
    let redis = Redis::start();
    let hist = ["--set", "history_size=3"];
    let a = node(&redis.url(), "node-a", &hist);
    let mut sse = Sub::sse(a.addr, "/sse?channel=r,s", None);
    wait_local(&a, "r", 1);
    wait_local(&a, "s", 1);
    a.publish("r", "r1");
    a.publish("s", "s1");
    a.publish("r", "r2");
    let got: Vec<Value> = (0..3)
        .map(|_| match sse.next(TIMEOUT) {
            Got::Msg(v) => v,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![data("r", 1, "r1"), data("s", 1, "s1"), data("r", 2, "r2")]
    );
    let id = sse.last_id().expect("SSE events carry an id");
    assert_eq!(no_epochs_in_cursor(&id), "r:2,s:1");
    drop(sse);
    // Missed while away.
    a.publish("r", "r3");
    a.publish("s", "s2");
    a.publish("r", "r4");

    let b = node(&redis.url(), "node-b", &hist);
    let mut sse = Sub::sse(b.addr, "/sse?channel=r,s", Some(&id));
    let mut got: Vec<Value> = (0..3)
        .map(|_| match sse.next(TIMEOUT) {
            Got::Msg(v) => v,
            other => panic!("{other:?}"),
        })
        .collect();
    // Each channel in order; the channels' replays may come in either order.
    got.sort_by_key(|m| m["channel"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        got,
        vec![data("r", 3, "r3"), data("r", 4, "r4"), data("s", 2, "s2")]
    );
    sse.expect_quiet();
    wait_local(&b, "r", 1);
    a.publish("r", "r5");
    assert_eq!(sse.read_through(5, TIMEOUT), vec![data("r", 5, "r5")]);
    assert_eq!(sse.last_seqs().as_deref(), Some("r:5,s:2"));
    sse.expect_quiet();

    // WebSocket `since=` on B: the history holds 3..=5.
    let mut ws = Sub::ws(b.addr, "/ws?channel=r&since=4");
    assert_eq!(
        ws.read_through(5, TIMEOUT),
        vec![data("r", 4, "r4"), data("r", 5, "r5")]
    );
    ws.expect_quiet();
    a.publish("r", "r6");
    assert_eq!(ws.read_through(6, TIMEOUT), vec![data("r", 6, "r6")]);

    // Long-poll on B: buffered at once, next_seq, then a held poll answered by a publish
    // on A.
    assert_eq!(
        no_epoch(b.get("/poll?channel=r&seq=5").json()),
        json!([data("r", 5, "r5"), data("r", 6, "r6")])
    );
    assert_eq!(
        b.get("/poll?channel=r").json(),
        json!([{"type": "next_seq", "channel": "r", "seq": 7, "epoch": a.epoch("r")}])
    );
    // `s` never reached B's feed (published before B started): only Redis has it.
    assert_eq!(
        no_epoch(b.get("/poll?channel=s&seq=1").json()),
        json!([data("s", 1, "s1"), data("s", 2, "s2")])
    );
    assert_eq!(
        b.get("/poll?channel=s").json(),
        json!([{"type": "next_seq", "channel": "s", "seq": 3, "epoch": a.epoch("s")}])
    );
    // The WebSocket `sub` op resumes the same way.
    let mut ws = Sub::ws(b.addr, "/ws?channel=other");
    if let Sub::Ws(w) = &mut ws {
        w.op_ok(&json!({"op": "sub", "channel": "s", "since": 2}));
    }
    assert_eq!(ws.read_through(2, TIMEOUT), vec![data("s", 2, "s2")]);
    ws.expect_quiet();
    let mut held = b.connect();
    held.send_request("GET", "/poll?channel=r&seq=7", &[], b"", true);
    assert_eq!(held.read_head(QUIET), Err(ReadError::Timeout), "held");
    a.publish("r", "r7");
    let r = held
        .read_response(TIMEOUT)
        .expect("the held poll is answered");
    assert_eq!(no_epoch(r.json()), json!([data("r", 7, "r7")]));

    // Past the history (5..=7 left): a gap first, on every kind of resume.
    let tail = [data("r", 5, "r5"), data("r", 6, "r6"), data("r", 7, "r7")];
    let mut ws = Sub::ws(b.addr, "/ws?channel=r&since=1");
    let mut want = vec![gap("r", 1, 4)];
    want.extend_from_slice(&tail);
    assert_eq!(ws.read_through(7, TIMEOUT), want);
    let mut sse = Sub::sse(b.addr, "/sse?channel=r", Some("r:2"));
    let mut want = vec![gap("r", 3, 4)];
    want.extend_from_slice(&tail);
    assert_eq!(sse.read_through(7, TIMEOUT), want);
    let mut want = vec![gap("r", 2, 4)];
    want.extend_from_slice(&tail);
    assert_eq!(
        no_epoch(b.get("/poll?channel=r&seq=2").json()),
        Value::from(want)
    );
    let mut st = b.stream("/stream?channel=r&since=4");
    assert_eq!(st.expect(), gap("r", 4, 4));
    for m in &tail {
        assert_eq!(&no_epoch(st.expect()), m);
    }
    ws.expect_quiet();
    sse.expect_quiet();
}

/// `/info?channel=` on either node counts the subscribers of every node; a node killed
/// with SIGKILL stops being counted within about 6 s (reports every 1 s, 5 s TTL).
#[test]
fn info_counts_subscribers_across_the_cluster_and_forgets_a_dead_node() {
    let redis = Redis::start();
    let mut a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let _a1 = Sub::ws(a.addr, "/ws?channel=c");
    let a2 = Sub::sse(a.addr, "/sse?channel=c", None);
    let _b1 = Sub::ws(b.addr, "/ws?channel=c,d");
    wait_local(&a, "c", 2);
    wait_local(&b, "c", 1);
    for n in [&a, &b] {
        wait_cluster_subscribers(n, "c", 3, TIMEOUT);
        wait_cluster_subscribers(n, "d", 1, TIMEOUT);
        let v = n.channel_info("c");
        assert_eq!(v["cluster"], "ok", "{v}");
        // The control socket's `info C` counts the same way.
        assert_eq!(n.ctl().cmd("info c")["subscribers"], 3);
    }
    a.publish("c", "one");
    b.publish("c", "two");
    for n in [&a, &b] {
        let v = n.channel_info("c");
        assert_eq!(
            (v["seq"].as_u64(), v["buffered"].as_u64()),
            (Some(2), Some(2)),
            "{v}"
        );
    }
    assert_eq!(a.info()["cluster"]["node"], "node-a");
    assert_eq!(b.info()["cluster"]["node"], "node-b");

    drop(a2);
    wait_local(&a, "c", 1);
    wait_cluster_subscribers(&b, "c", 2, TIMEOUT);

    a.kill9();
    let killed = Instant::now();
    wait_cluster_subscribers(&b, "c", 1, Duration::from_secs(7));
    let took = killed.elapsed();
    let v = b.channel_info("c");
    assert_eq!(v["local_subscribers"], 1, "{v}");
    assert_eq!(b.channel_info("d")["subscribers"], 1);
    eprintln!("a killed node's counts disappeared after {took:?}");
}

/// Redis stops mid-stream, right after a burst of publishes (some may not have reached
/// every node's feed yet): publishing answers 503 with a reason and subscribers stay
/// connected. Redis comes back with its data: node A reconnects and publishes while node B
/// is still cut off (a closed gate in front of it); then B reconnects and fills in from
/// the Redis history what its feed missed, answering a long-poll it held all along. Every
/// subscriber on both nodes ends with exactly the accepted messages, in order, once.
#[test]
fn redis_outage_and_restart_lose_nothing_and_duplicate_nothing() {
    let mut redis = Redis::start();
    let gate = Gate::new(redis.addr());
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&gate.url(), "node-b", &[]);
    let mut subs = vec![
        Sub::ws(a.addr, "/ws?channel=o"),
        Sub::sse(a.addr, "/sse?channel=o", None),
        Sub::ws(b.addr, "/ws?channel=o"),
        Sub::sse(b.addr, "/sse?channel=o", None),
    ];
    wait_local(&a, "o", 2);
    wait_local(&b, "o", 2);
    let mut accepted = Vec::new();
    let note = |accepted: &mut Vec<Value>, seq: u64, content: &str| {
        assert_eq!(seq, accepted.len() as u64 + 1, "seqs go on without a hole");
        accepted.push(data("o", seq, content));
    };
    let mut ctl = b.ctl();
    for i in 1..=12 {
        let c = format!("before {i}");
        let seq = match i % 3 {
            0 => a.publish("o", &c),
            1 => b.publish("o", &c),
            _ => ctl_publish(&mut ctl, "o", &c),
        };
        note(&mut accepted, seq, &c);
    }
    // Mid-stream: whatever the feeds have not delivered yet is in Redis's history.
    redis.stop();
    // Once a node knows (its feed saw the end), it refuses: 503, nothing sent. (A
    // publish racing with the stop, on a link that has not seen it yet, may get 504
    // instead: its outcome is unknown to the node, which says so.)
    for n in [&a, &b] {
        n.wait_redis("down", TIMEOUT);
    }
    for n in [&a, &b] {
        for attempt in 0..2 {
            let r = n.admin_post("/pub?channel=o", format!("lost {attempt}").as_bytes());
            assert_eq!(r.status, 503, "{}", r.text());
            assert_unavailable(&r.json());
        }
    }
    assert_unavailable(&ctl.cmd("pub o lost via control"));
    for n in [&a, &b] {
        n.wait_redis("down", TIMEOUT);
        let v = n.channel_info("o");
        assert!(
            v["cluster"]
                .as_str()
                .is_some_and(|c| c.starts_with("unavailable")),
            "{v}"
        );
        assert_eq!(n.info()["connections"], 2, "subscribers stay connected");
    }
    // A long-poll for what comes next, held on B through the outage.
    let mut poll = b.connect();
    poll.send_request("GET", "/poll?channel=o&seq=13", &[], b"", true);
    // What each subscriber has so far: the feeds may not have delivered all of the burst.
    let mut got: Vec<Vec<Value>> = subs.iter_mut().map(Sub::read_available).collect();
    for (sub, got) in subs.iter().zip(&got) {
        assert_eq!(got[..], accepted[..got.len()], "{}", sub.name());
    }

    // Redis comes back; B stays cut off for now.
    gate.close();
    redis.restart();
    let restarted = Instant::now();
    a.wait_redis_up();
    eprintln!(
        "node A reconnected {:?} after the restart",
        restarted.elapsed()
    );
    for i in 1..=3 {
        let c = format!("while b reconnects {i}");
        note(
            &mut accepted,
            publish_retry(&a, "o", &c, CLUSTER_UP_TIMEOUT),
            &c,
        );
    }
    assert_eq!(
        b.redis_state().as_deref(),
        Some("down"),
        "B is still cut off: {}",
        b.info()
    );
    for (sub, got) in subs.iter_mut().zip(&mut got).take(2) {
        got.extend(sub.read_through(15, TIMEOUT));
        assert_eq!(*got, accepted, "{} on node a", sub.name());
    }
    assert_eq!(
        poll.read_head(QUIET),
        Err(ReadError::Timeout),
        "B's poll is still held"
    );

    gate.open();
    let opened = Instant::now();
    b.wait_redis_up();
    eprintln!(
        "node B reconnected {:?} after the gate opened",
        opened.elapsed()
    );
    let r = poll
        .read_response(TIMEOUT)
        .expect("the held poll is answered");
    let answered = no_epoch(r.json());
    let answered = answered.as_array().expect("an array");
    assert!(
        !answered.is_empty() && answered[..] == accepted[12..12 + answered.len()],
        "the held poll answered {answered:?}"
    );
    let c = "after via b".to_string();
    note(
        &mut accepted,
        publish_retry(&b, "o", &c, CLUSTER_UP_TIMEOUT),
        &c,
    );
    let c = "after via b's control socket";
    let mut ctl = b.ctl();
    note(&mut accepted, ctl_publish(&mut ctl, "o", c), c);
    let c = "after via a";
    note(&mut accepted, a.publish("o", c), c);
    let last = accepted.len() as u64;
    for (i, (sub, got)) in subs.iter_mut().zip(&mut got).enumerate() {
        got.extend(sub.read_through(last, TIMEOUT));
        assert_eq!(
            *got,
            accepted,
            "{} on node {}",
            sub.name(),
            if i < 2 { "a" } else { "b" }
        );
    }
    for sub in &mut subs {
        sub.expect_quiet();
    }
    // The data survived the restart (append-only file).
    assert_eq!(
        redis.cmd(&["GET", "pushedge:{o}:seq"]).text().as_deref(),
        Some(last.to_string().as_str())
    );
}

/// Two nodes share one subscriber port. Node A is killed with SIGKILL while messages are
/// being published; its clients reconnect to the same port, now served by node B alone,
/// with `Last-Event-ID` / `since`, and get everything published meanwhile, once, in order.
#[test]
fn clients_of_a_killed_node_resume_on_the_node_sharing_its_port() {
    let redis = Redis::start();
    let hist = ["--set", "history_size=1000"];
    let mut a = node(&redis.url(), "node-a", &hist);
    let port = a.addr;
    // Only A listens yet: both clients land on it.
    let mut subs = [
        Sub::ws(port, "/ws?channel=k"),
        Sub::sse(port, "/sse?channel=k", None),
    ];
    wait_local(&a, "k", 2);
    let b = node_on(&redis.url(), "node-b", port, &hist);
    assert_eq!(b.addr, port);

    let stop = AtomicBool::new(false);
    let accepted = Mutex::new(Vec::new());
    let mut got: Vec<Vec<Value>> = thread::scope(|scope| {
        // A publisher on B's admin port, every few milliseconds until told to stop.
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let c = format!("k{i}");
                let seq = b.publish("k", &c);
                accepted.lock().unwrap().push(data("k", seq, &c));
                thread::sleep(Duration::from_millis(5));
            }
        });
        // Whatever happens here, the publisher must stop, or the scope never ends.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut got: Vec<Vec<Value>> = subs
                .iter_mut()
                .map(|s| s.read_through(5, TIMEOUT))
                .collect();
            a.kill9();
            for (sub, got) in subs.iter_mut().zip(&mut got) {
                got.extend(sub.read_to_end(TIMEOUT));
            }
            // Reconnect where each left off, to the same port.
            let last_seq = |got: &[Value]| got.last().and_then(|m| m["seq"].as_u64());
            let since = last_seq(&got[0]).expect("a data message") + 1;
            subs[0] = Sub::ws(port, &format!("/ws?channel=k&since={since}"));
            let id = subs[1].last_id().expect("an event id");
            assert_eq!(
                Some(no_epochs_in_cursor(&id)),
                last_seq(&got[1]).map(|s| format!("k:{s}"))
            );
            subs[1] = Sub::sse(port, "/sse?channel=k", Some(&id));
            wait_local(&b, "k", 2);
            // Some more traffic while the new connections are live.
            let target = accepted.lock().unwrap().len() + 20;
            assert!(
                wait_until(TIMEOUT, || accepted.lock().unwrap().len() >= target),
                "the publisher stalled"
            );
            got
        }));
        stop.store(true, Ordering::SeqCst);
        result.unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    // The scope joined the publisher: `accepted` is final.
    let accepted = accepted.into_inner().unwrap();
    let last = accepted.last().and_then(|m| m["seq"].as_u64()).unwrap();
    assert_eq!(last, accepted.len() as u64, "seqs 1..=n");
    for (sub, got) in subs.iter_mut().zip(&mut got) {
        got.extend(sub.read_through(last, TIMEOUT));
        assert_eq!(*got, accepted, "{}", sub.name());
        sub.expect_quiet();
    }
}

/// Resuming while messages pour in: what the Redis history replays and what the feed
/// brings right after overlap, and the overlap must be dropped. Thirty resumes on B
/// (WebSocket `since`, SSE `Last-Event-ID`) during a publish storm through A: each one
/// gets every seq from where it resumed, once, in order.
#[test]
fn resumes_during_a_publish_storm_get_no_duplicates() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let stop = AtomicBool::new(false);
    let published = std::sync::atomic::AtomicU64::new(0);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let seq = a.publish("storm", "x");
                published.store(seq, Ordering::SeqCst);
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(wait_until(TIMEOUT, || published.load(Ordering::SeqCst) >= 20));
            for i in 0..30 {
                let from = published.load(Ordering::SeqCst) - 5;
                let mut sub = if i % 2 == 0 {
                    Sub::ws(b.addr, &format!("/ws?channel=storm&since={from}"))
                } else {
                    let id = format!("storm:{}", from - 1);
                    Sub::sse(b.addr, "/sse?channel=storm", Some(&id))
                };
                let until = published.load(Ordering::SeqCst) + 10;
                let got = seqs(&sub.read_through(until, TIMEOUT));
                let want: Vec<u64> = (from..=until).collect();
                assert_eq!(got, want, "{} resumed from {from}", sub.name());
            }
        }));
        stop.store(true, Ordering::SeqCst);
        result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    });
}

/// A node cut off from Redis for longer than the history holds (`history_size=3`) tells
/// its subscribers what it could not fill in with a `gap`, then delivers the rest; SSE ids
/// stay resumable. Publishing through the cut-off node answers 503 meanwhile.
#[test]
fn a_node_cut_off_longer_than_the_history_fills_in_with_a_gap() {
    let redis = Redis::start();
    let gate = Gate::new(redis.addr());
    let hist = ["--set", "history_size=3"];
    let a = node(&redis.url(), "node-a", &hist);
    let b = node(&gate.url(), "node-b", &hist);
    let mut on_a = Sub::ws(a.addr, "/ws?channel=g");
    let mut on_b = vec![
        Sub::ws(b.addr, "/ws?channel=g"),
        Sub::sse(b.addr, "/sse?channel=g", None),
    ];
    wait_local(&a, "g", 1);
    wait_local(&b, "g", 2);
    a.publish("g", "g1");
    assert_eq!(on_a.read_through(1, TIMEOUT), vec![data("g", 1, "g1")]);
    for sub in &mut on_b {
        assert_eq!(sub.read_through(1, TIMEOUT), vec![data("g", 1, "g1")]);
    }

    gate.close();
    b.wait_redis("down", TIMEOUT);
    let r = b.admin_post("/pub?channel=g", b"refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_unavailable(&r.json());
    let mut all = vec![data("g", 1, "g1")];
    for i in 2..=7 {
        let c = format!("g{i}");
        assert_eq!(a.publish("g", &c), i);
        all.push(data("g", i, &c));
    }
    assert_eq!(on_a.read_through(7, TIMEOUT), all[1..]);
    gate.open();
    b.wait_redis_up();
    let mut want = vec![gap("g", 2, 4)];
    want.extend_from_slice(&all[4..]);
    for sub in &mut on_b {
        assert_eq!(sub.read_through(7, TIMEOUT), want, "{}", sub.name());
        sub.expect_quiet();
    }
    assert_eq!(on_b[1].last_seqs().as_deref(), Some("g:7"));
    // Live again, through either node.
    assert_eq!(publish_retry(&b, "g", "g8", CLUSTER_UP_TIMEOUT), 8);
    for sub in on_b.iter_mut().chain([&mut on_a]) {
        assert_eq!(sub.read_through(8, TIMEOUT), vec![data("g", 8, "g8")]);
    }
}

/// Cuts every node's feed (`CLIENT KILL TYPE pubsub`) and publishes through both nodes
/// meanwhile: a node refuses publishes (503) while its own feed is down and accepts them
/// again once it has reconnected and caught up, so whatever one node accepted while the
/// other's feed was still down is filled in on the other from the Redis history. Several
/// cuts in a row, nothing accepted is lost or doubled.
#[test]
fn messages_accepted_while_a_feed_is_cut_are_filled_in() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let mut subs = vec![
        Sub::ws(a.addr, "/ws?channel=f"),
        Sub::sse(b.addr, "/sse?channel=f", None),
    ];
    wait_local(&a, "f", 1);
    wait_local(&b, "f", 1);
    let mut all = Vec::new();
    for cut in 1..=4u64 {
        let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_eq!(killed, Resp::Int(2), "both feeds cut");
        for (n, node) in [&a, &b].into_iter().enumerate() {
            let c = format!("cut {cut} via {}", ["a", "b"][n]);
            let seq = publish_retry(node, "f", &c, CLUSTER_UP_TIMEOUT);
            assert_eq!(seq, all.len() as u64 + 1);
            all.push(data("f", seq, &c));
        }
        a.wait_redis_up();
        b.wait_redis_up();
        let last = all.len() as u64;
        for sub in &mut subs {
            assert_eq!(
                sub.read_through(last, TIMEOUT),
                all[all.len() - 2..],
                "{} after cut {cut}",
                sub.name()
            );
        }
    }
    for sub in &mut subs {
        sub.expect_quiet();
    }
}

/// A feed that was up reconnects at once after a blip, however many blips came before:
/// the backoff should start again from its minimum (100 ms) after a successful session.
#[test]
fn feed_reconnects_promptly_after_each_of_many_blips() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let mut took = Vec::new();
    for _ in 0..12 {
        a.wait_redis_up();
        // Connected and caught up for a moment: a good session.
        std::thread::sleep(Duration::from_millis(100));
        let errors = |s: &Server| s.info()["cluster"]["errors"].as_u64().unwrap();
        let before = errors(&a);
        assert_eq!(
            redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]),
            Resp::Int(1)
        );
        let cut = Instant::now();
        // The node may be down for only a few milliseconds, shorter than one look at
        // `/info`: the error counter says that the feed was lost.
        assert!(
            wait_until(TIMEOUT, || errors(&a) > before),
            "the feed never noticed the kill: {}",
            a.info()
        );
        a.wait_redis_up();
        took.push(cut.elapsed());
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(1500)),
        "reconnect times after successive blips: {took:?}"
    );
}

/// Redis comes back without its data (no persistence, a new instance): the nodes raise
/// the counters again to what they have seen, so no seq is handed out twice, and a resume
/// from before the loss gets a `gap`.
#[test]
fn a_redis_that_lost_its_data_never_repeats_a_seq() {
    let mut redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let mut subs = vec![
        Sub::ws(a.addr, "/ws?channel=l"),
        Sub::ws(b.addr, "/ws?channel=l"),
    ];
    wait_local(&a, "l", 1);
    wait_local(&b, "l", 1);
    let mut all = Vec::new();
    for i in 1..=5 {
        let c = format!("l{i}");
        assert_eq!(a.publish("l", &c), i);
        all.push(data("l", i, &c));
    }
    for sub in &mut subs {
        assert_eq!(sub.read_through(5, TIMEOUT), all);
    }
    redis.stop();
    redis.wipe_data();
    redis.restart();
    assert_eq!(
        redis.cmd(&["EXISTS", "pushedge:{l}:hist"]),
        Resp::Int(0),
        "the history is gone"
    );
    a.wait_redis_up();
    b.wait_redis_up();
    // Both publish paths: the node's own floor and the re-seeded counter.
    assert_eq!(publish_retry(&b, "l", "l6", CLUSTER_UP_TIMEOUT), 6);
    assert_eq!(publish_retry(&a, "l", "l7", CLUSTER_UP_TIMEOUT), 7);
    for sub in &mut subs {
        assert_eq!(
            sub.read_through(7, TIMEOUT),
            vec![data("l", 6, "l6"), data("l", 7, "l7")]
        );
        sub.expect_quiet();
    }
    // B's own copy still holds l1..l5 and replays them; a node that joins now finds them
    // gone with Redis's data and says so with a gap.
    let mut ws = Sub::ws(b.addr, "/ws?channel=l&since=3");
    assert_eq!(ws.read_through(7, TIMEOUT), all_after(&all, 2));
    let c = node(&redis.url(), "node-c", &[]);
    c.wait_redis_up();
    let mut ws = Sub::ws(c.addr, "/ws?channel=l&since=3");
    assert_eq!(
        ws.read_through(7, TIMEOUT),
        vec![gap("l", 3, 5), data("l", 6, "l6"), data("l", 7, "l7")]
    );
    for n in [&a, &b, &c] {
        assert_eq!(n.epoch("l"), a.epoch("l"), "the stream kept its epoch");
    }
}

/// `all` from its `skip`-th message, with l6 and l7 after it.
fn all_after(all: &[Value], skip: usize) -> Vec<Value> {
    let mut v = all[skip..].to_vec();
    v.push(data("l", 6, "l6"));
    v.push(data("l", 7, "l7"));
    v
}

/// `POST /close` on one node closes the channel for the subscribers of every node.
#[test]
fn close_on_one_node_closes_the_channel_everywhere() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let mut subs = vec![
        Sub::ws(a.addr, "/ws?channel=z"),
        Sub::ws(b.addr, "/ws?channel=z"),
    ];
    wait_local(&a, "z", 1);
    wait_local(&b, "z", 1);
    a.publish("z", "z1");
    let r = b.admin_post("/close?channel=z", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    for sub in &mut subs {
        assert_eq!(
            sub.read_through(1, TIMEOUT),
            vec![data("z", 1, "z1")],
            "{}",
            sub.name()
        );
        match sub.next(TIMEOUT) {
            Got::Msg(v) => assert_eq!(v, json!({"type": "close", "channel": "z"})),
            other => panic!("expected close, got {other:?}"),
        }
    }
    wait_local(&a, "z", 0);
    wait_local(&b, "z", 0);
}

/// In a cluster the epoch lives in Redis beside the seq: a channel closed through one node
/// and published again through the other starts a new stream on both, and a client that
/// resumes on either node from the old stream (its epoch, or a plain seq past the new
/// stream's end) is told at once with a `reset` carrying the new epoch, then gets the new
/// stream; a cursor of the new stream resumes normally.
#[test]
fn a_cursor_from_a_closed_stream_gets_a_reset_on_every_node() {
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    for i in 1..=3 {
        a.publish("e", &format!("old{i}"));
    }
    let old = a.epoch("e");
    assert_eq!(b.epoch("e"), old, "one stream for the cluster");
    let r = b.admin_post("/close?channel=e", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.publish("e", "new1"), 1, "the new stream starts at 1");
    let new = b.epoch("e");
    assert_ne!(old, new, "a close ends the stream");
    assert_eq!(a.epoch("e"), new);
    let reset = json!({"type": "reset", "channel": "e", "epoch": new, "seq": 1});
    let first = json!({"type": "data", "channel": "e", "seq": 1, "epoch": new, "content": "new1"});
    for n in [&a, &b] {
        for since in [format!("2@{old}"), "4".to_string()] {
            let q = urlencode(&since);
            let mut ws = n.ws(&format!("/ws?channel=e&since={q}"));
            assert_eq!(ws.recv_json(), reset, "ws since={since}");
            assert_eq!(ws.recv_json(), first, "ws since={since}");
            let mut sse = n.sse(&format!("/sse?channel=e&since={q}"));
            assert_eq!(sse.expect_event().data, reset, "sse since={since}");
            assert_eq!(sse.expect_event().data, first, "sse since={since}");
            let r = n.get(&format!("/poll?channel=e&seq={q}"));
            assert_eq!(r.json(), json!([reset, first]), "poll seq={since}");
        }
        let mut ws = n.ws(&format!("/ws?channel=e&since=0@{new}"));
        assert_eq!(ws.recv_json(), first, "a cursor of the new stream");
        ws.expect_quiet();
    }
}

/// A channel closed while a node was cut off from Redis is closed for that node's
/// subscribers too once it is back (the `close` must not be lost with the feed), and the
/// node does not bring the closed channel's counter back.
#[test]
fn close_while_a_node_is_cut_off_reaches_it_when_it_is_back() {
    let redis = Redis::start();
    let gate = Gate::new(redis.addr());
    let a = node(&redis.url(), "node-a", &[]);
    let b = node(&gate.url(), "node-b", &[]);
    let mut on_b = Sub::ws(b.addr, "/ws?channel=z");
    wait_local(&b, "z", 1);
    a.publish("z", "z1");
    assert_eq!(on_b.read_through(1, TIMEOUT), vec![data("z", 1, "z1")]);
    gate.close();
    b.wait_redis("down", TIMEOUT);
    let r = a.admin_post("/close?channel=z", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    gate.open();
    b.wait_redis_up();
    let got = on_b.next(TIMEOUT);
    let seq_after = redis.cmd(&["GET", "pushedge:{z}:seq"]);
    assert!(
        matches!(&got, Got::Msg(v) if *v == json!({"type": "close", "channel": "z"})),
        "B's subscriber got {got:?} instead of close; counter in Redis now {seq_after:?}"
    );
    assert_eq!(
        seq_after,
        Resp::Bulk(None),
        "the closed channel's counter stays gone"
    );
}

/// The Redis layout of the module doc: `<prefix>:{C}:seq` and `<prefix>:{C}:hist` with
/// the `cluster.key_ttl_secs` expiry; nodes with another `cluster.prefix` on the same
/// Redis form another cluster and share nothing.
#[test]
fn prefix_separates_clusters_and_keys_expire() {
    let redis = Redis::start();
    let ttl = ["--set", "cluster.key_ttl_secs=120"];
    let a = node(&redis.url(), "node-a", &ttl);
    let other = node(
        &redis.url(),
        "node-x",
        &[
            "--set",
            "cluster.prefix=other",
            "--set",
            "cluster.key_ttl_secs=120",
        ],
    );
    let mut on_a = Sub::ws(a.addr, "/ws?channel=p");
    let mut on_other = Sub::ws(other.addr, "/ws?channel=p");
    wait_local(&a, "p", 1);
    wait_local(&other, "p", 1);
    assert_eq!(a.publish("p", "for pushedge"), 1);
    assert_eq!(other.publish("p", "for other"), 1, "a counter of its own");
    assert_eq!(
        on_a.read_through(1, TIMEOUT),
        vec![data("p", 1, "for pushedge")]
    );
    assert_eq!(
        on_other.read_through(1, TIMEOUT),
        vec![data("p", 1, "for other")]
    );
    on_a.expect_quiet();
    on_other.expect_quiet();
    // Counts are per cluster too (reported every second).
    wait_cluster_subscribers(&other, "p", 1, TIMEOUT);
    wait_cluster_subscribers(&a, "p", 1, TIMEOUT);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(other.channel_info("p")["subscribers"], 1);
    assert_eq!(a.channel_info("p")["subscribers"], 1);
    for prefix in ["pushedge", "other"] {
        assert_eq!(
            redis
                .cmd(&["GET", &format!("{prefix}:{{p}}:seq")])
                .text()
                .as_deref(),
            Some("1")
        );
        for key in ["seq", "hist"] {
            let key = format!("{prefix}:{{p}}:{key}");
            match redis.cmd(&["TTL", &key]) {
                Resp::Int(t) => assert!((1..=120).contains(&t), "TTL {key} = {t}"),
                other => panic!("TTL {key}: {other:?}"),
            }
        }
    }
}
