//! Hot handover (`ctl upgrade`) of a cluster node, against a real `redis-server` (see
//! `tests/src/redis.rs`) and two real nodes: the subscribers of the upgraded node miss
//! nothing of what is published on any node meanwhile, get nothing twice, in order, and
//! stay connected; the node keeps its id and its registrations in Redis, its idempotency
//! records stay in Redis; a successor that fails leaves the old process serving with its
//! Redis links working (the feed it held during the freeze included).

use pushedge_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(15);

/// History large enough that the fill-in never has to say `gap` here.
const HISTORY: &str = "history_size=100000";

/// Attempts at one upgrade refused with "retry" before the test fails.
const UPGRADE_ATTEMPTS: usize = 10;

/// Idle connections on the upgraded node.
const IDLE: usize = 600;

/// A cluster node without a configured `cluster.node_id` (its id is made up at start:
/// the successor must take it over).
fn unnamed_node(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let url = format!("cluster.redis_url={redis_url}");
    // The WebSocket publishers publish as fast as they are answered.
    let mut args = vec![
        "--set",
        &url,
        "--set",
        HISTORY,
        "--set",
        "client_publish_rate=100000",
        "--set",
        "client_publish_burst=100000",
    ];
    args.extend_from_slice(extra);
    let s = Server::start_with_env(&args, env);
    s.wait_redis_up();
    s
}

/// An acknowledged publish: channel, seq, content.
type Acked = (String, u64, String);

/// Publishes `<tag>-1`, `<tag>-2`, ... through `admin`'s `POST /pub`, round robin over
/// `channels`, each on its own connection, until `stop`; returns what was answered 200
/// (with its seq). A 503 (a node filling in, or frozen), a connection the old process
/// never read or an error: the next number, that one is not acknowledged.
fn publisher(
    admin: SocketAddr,
    tag: &'static str,
    channels: &'static [&'static str],
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> thread::JoinHandle<Vec<Acked>> {
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let channel = channels[n as usize % channels.len()];
            let content = format!("{tag}-{n}");
            let Ok(mut c) = Conn::try_connect(admin) else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.send_request(
                "POST",
                &format!("/pub?channel={channel}"),
                &[],
                content.as_bytes(),
                true,
            );
            if let Ok(r) = c.read_response(LONG) {
                if r.status == 200 {
                    let seq = r.json()["seq"].as_u64().expect("a seq in a 200");
                    acked.push((channel.to_string(), seq, content));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        acked
    })
}

/// Publishes `w-1`, `w-2`, ... to `channel` as a WebSocket client of `addr` (`pub` ops,
/// the next one as soon as the last is answered, so that one is nearly always under way
/// in Redis) until `stop`; returns what was answered `ok`. A 503 (frozen, or the node
/// filling in) is not acknowledged; the connection must stay open throughout.
fn ws_publisher(
    addr: SocketAddr,
    channel: &'static str,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> thread::JoinHandle<Vec<Acked>> {
    let mut ws = Ws::connect(addr, "/ws");
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let content = format!("w-{n}");
            ws.send_json(&json!({"op": "pub", "channel": channel, "content": content, "id": n}));
            let v = loop {
                match ws.recv(LONG) {
                    WsEvent::Ping => continue,
                    WsEvent::Json(v) if v["type"] == "connected" => continue,
                    WsEvent::Json(v) => break v,
                    other => panic!("the WebSocket publisher: {other:?} after {n}"),
                }
            };
            assert_eq!(v["id"], n, "{v}");
            match (v["type"].as_str(), v["code"].as_u64()) {
                (Some("ok"), _) => {
                    let seq = v["seq"].as_u64().expect("a seq in an ok");
                    acked.push((channel.to_string(), seq, content));
                    count.fetch_add(1, Ordering::SeqCst);
                }
                (Some("error"), Some(503)) => thread::sleep(Duration::from_millis(2)),
                _ => panic!("the WebSocket publisher: {v}"),
            }
        }
        acked
    })
}

/// Opens WebSockets on `addr` resuming (`since=1`) channels no node has seen, so that
/// their positions are read from Redis, one after the other (each closed a moment after
/// its request) until `stop`; returns how many.
fn resumer(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            if let Ok(mut c) = Conn::try_connect(addr) {
                let target = format!("/ws?channel=cold-{n}&since=1");
                let _ = c.send(RawWs::handshake_request(&target, "13").as_bytes());
                thread::sleep(Duration::from_millis(3));
            }
        }
        n
    })
}

/// A WebSocket or SSE subscriber.
enum Sub {
    Ws(Ws),
    Sse(SseStream),
}

impl Sub {
    /// The next JSON message (pings skipped); panics when the connection ends or nothing
    /// comes within `LONG`.
    fn next(&mut self, who: &str) -> Value {
        match self {
            Sub::Ws(ws) => loop {
                match ws.recv(LONG) {
                    WsEvent::Ping => continue,
                    WsEvent::Json(v) => return v,
                    other => panic!("{who}: {other:?}"),
                }
            },
            Sub::Sse(s) => match s.next_event(LONG) {
                Ok(e) => e.data,
                Err(e) => panic!("{who}: {e:?}"),
            },
        }
    }

    /// The data messages of `channel` (seq, content) until its `end` message; anything
    /// else of the channel (a gap, a reset, a close) fails.
    fn read_until_end(&mut self, who: &str, channel: &str) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        loop {
            let v = self.next(who);
            match v["type"].as_str() {
                Some("data") => {
                    assert_eq!(v["channel"], channel, "{who}: {v}");
                    let content = v["content"].as_str().expect("content").to_string();
                    if content == "end" {
                        return got;
                    }
                    got.push((v["seq"].as_u64().expect("seq"), content));
                }
                Some("connected" | "subscribed") => {}
                _ => panic!("{who}: unexpected {v} after {got:?}"),
            }
        }
    }
}

/// What a subscriber of `channel` got: strictly increasing seqs (nothing twice, in
/// order), each content once, and every acknowledged publish of the channel with the
/// seq its publisher was told.
fn check(who: &str, channel: &str, got: &[(u64, String)], acked: &[Acked]) {
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "{who}: out of order or duplicated: {got:?}"
    );
    let mut contents: Vec<&str> = got.iter().map(|(_, c)| c.as_str()).collect();
    contents.sort_unstable();
    let n = contents.len();
    contents.dedup();
    assert_eq!(contents.len(), n, "{who}: a content twice: {got:?}");
    let missing: Vec<&Acked> = acked
        .iter()
        .filter(|(c, _, _)| c == channel)
        .filter(|(_, seq, content)| {
            got.binary_search_by_key(seq, |(s, _)| *s)
                .map_or(true, |i| got[i].1 != *content)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: lost (or under another seq) {missing:?}; got {} messages",
        got.len()
    );
}

/// The `nth` upgrade of `s` (its control socket is served by the last successor). A
/// subscription read from Redis that began just as the freeze did makes an attempt fail
/// with "retry" (the node goes on serving, which the checks of what the subscribers got
/// cover too): tried again then.
fn upgrade(s: &Server, nth: usize) -> Successor {
    let mut answers = Vec::new();
    loop {
        let out = s.ctl_binary(&["upgrade"]);
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            assert!(answer.contains("\"upgraded\":true"), "{answer}");
            break;
        }
        assert!(
            answer.contains(": retry") && answers.len() < UPGRADE_ATTEMPTS,
            "upgrade: {answer} after {answers:?}\n{}",
            s.log()
        );
        answers.push(answer);
    }
    let new = Successor::nth(s, nth);
    assert_ne!(new.0 as u32, s.pid());
    new
}

/// The members of Redis's sorted set of nodes.
fn registered_nodes(redis: &Redis) -> Vec<String> {
    match redis.cmd(&["ZRANGE", "pushedge:nodes", "0", "-1"]) {
        Resp::Array(Some(items)) => {
            let mut v: Vec<String> = items.iter().filter_map(Resp::text).collect();
            v.sort();
            v
        }
        other => panic!("ZRANGE pushedge:nodes: {other:?}"),
    }
}

#[test]
fn an_upgraded_node_misses_nothing_published_on_any_node() {
    let redis = Redis::start();
    let a = unnamed_node(&redis.url(), &["--set", "client_publish=live"], &[]);
    let b = node(&redis.url(), "node-b", &["--set", HISTORY]);
    let a_id = a.info()["node"].as_str().expect("a node id").to_string();

    let mut subs = vec![
        (
            "ws live",
            "live",
            Sub::Ws(Ws::connect(a.addr, "/ws?channel=live")),
        ),
        (
            "sse live",
            "live",
            Sub::Sse(SseStream::open(a.addr, "/sse?channel=live", &[])),
        ),
        (
            "ws side",
            "side",
            Sub::Ws(Ws::connect(a.addr, "/ws?channel=side")),
        ),
        (
            "sse side",
            "side",
            Sub::Sse(SseStream::open(a.addr, "/sse?channel=side", &[])),
        ),
    ];
    for ch in ["live", "side"] {
        assert!(
            wait_until(TIMEOUT, || a.channel_info(ch)["local_subscribers"].as_u64()
                == Some(2)),
            "{}",
            a.channel_info(ch)
        );
    }
    // Idle connections: the freeze takes a while, and the feed goes on meanwhile.
    let _idle: Vec<Conn> = (0..IDLE).map(|_| a.connect()).collect();
    assert!(wait_until(TIMEOUT, || a.info()["connections"].as_u64()
        >= Some(IDLE as u64 + 4)));
    // An idempotency key used before the upgrade.
    let r = a.admin_post("/pub?channel=keyed&key=k1", b"once");
    assert_eq!(r.status, 200, "{}", r.text());
    let keyed_seq = r.json()["seq"].as_u64().unwrap();

    // Publishers on both nodes; the upgrade of A in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let via_a = Arc::new(AtomicUsize::new(0));
    let via_b = Arc::new(AtomicUsize::new(0));
    let via_ws = Arc::new(AtomicUsize::new(0));
    let pub_b = publisher(
        b.admin_addr,
        "b",
        &["live", "side"],
        stop.clone(),
        via_b.clone(),
    );
    let pub_a = publisher(a.admin_addr, "a", &["live"], stop.clone(), via_a.clone());
    let pub_ws = ws_publisher(a.addr, "live", stop.clone(), via_ws.clone());
    let resuming = resumer(a.addr, stop.clone());
    let counts = [&via_a, &via_b, &via_ws];
    assert!(wait_until(LONG, || counts
        .iter()
        .all(|c| c.load(Ordering::SeqCst) >= 20)));
    // Two upgrades (the successor hands over in turn); after each, publishing goes on
    // through both nodes (A's successor refuses with 503 until its feed has filled in,
    // then serves).
    let mut successors = Vec::new();
    for nth in 1..=2 {
        successors.push(upgrade(&a, nth));
        let then: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        assert!(
            wait_until(LONG, || counts
                .iter()
                .zip(&then)
                .all(|(c, t)| c.load(Ordering::SeqCst) >= t + 30)),
            "publishing did not go on after upgrade {nth}:\n{}",
            a.log()
        );
    }
    assert_ne!(successors[0].0, successors[1].0);
    stop.store(true, Ordering::SeqCst);
    let mut acked = pub_a.join().unwrap();
    acked.extend(pub_b.join().unwrap());
    acked.extend(pub_ws.join().unwrap());
    assert!(resuming.join().unwrap() > 0);
    for ch in ["live", "side"] {
        b.publish(ch, "end");
    }
    for (who, ch, sub) in &mut subs {
        let got = sub.read_until_end(who, ch);
        check(who, ch, &got, &acked);
    }

    // The successor is the same node: same id, and the old process exited 0.
    assert_eq!(a.info()["node"], a_id.as_str(), "{}", a.info());
    a.wait_redis_up();
    let mut a = a;
    let status = a.wait_exit(LONG).expect("the old process exited");
    assert!(status.success(), "{status:?}");

    // Its counts in Redis are the successor's (a new subscription there shows on B), under
    // the same id: two nodes registered, not three.
    let mut fresh = Sub::Ws(Ws::connect(a.addr, "/ws?channel=fresh"));
    assert!(
        wait_until(LONG, || b.channel_info("fresh")["subscribers"].as_u64()
            == Some(1)),
        "{}",
        b.channel_info("fresh")
    );
    assert_eq!(registered_nodes(&redis), {
        let mut v = vec![a_id.clone(), "node-b".to_string()];
        v.sort();
        v
    });
    assert!(
        wait_until(LONG, || b.channel_info("live")["subscribers"].as_u64()
            == Some(2)),
        "{}",
        b.channel_info("live")
    );
    b.publish("fresh", "hello");
    b.publish("fresh", "end");
    let got = fresh.read_until_end("ws fresh", "fresh");
    assert_eq!(got, [(1, "hello".to_string())]);

    // The idempotency record made before the upgrade is still honoured (it lives in Redis).
    let r = a.admin_post("/pub?channel=keyed&key=k1", b"twice");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seq"].as_u64(), Some(keyed_seq), "{}", r.text());
    assert_eq!(r.json()["duplicate"], true, "{}", r.text());
    drop(successors);
}

#[test]
fn a_cluster_node_whose_successor_fails_keeps_serving() {
    let redis = Redis::start();
    // Its successors die after receiving one connection record: after the freeze, with
    // the old process's feed held.
    let a = unnamed_node(
        &redis.url(),
        &["--set", "client_publish=c"],
        &[("PUSHEDGE_HANDOVER_TEST_EXIT_AFTER", "1")],
    );
    let b = node(&redis.url(), "node-b", &["--set", HISTORY]);
    let mut ws = Sub::Ws(Ws::connect(a.addr, "/ws?channel=c"));
    let mut sse = Sub::Sse(SseStream::open(a.addr, "/sse?channel=c", &[]));
    assert!(wait_until(TIMEOUT, || a.channel_info("c")
        ["local_subscribers"]
        .as_u64()
        == Some(2)));

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let pub_b = publisher(b.admin_addr, "b", &["c"], stop.clone(), count.clone());
    let ws_count = Arc::new(AtomicUsize::new(0));
    let pub_ws = ws_publisher(a.addr, "c", stop.clone(), ws_count.clone());
    assert!(wait_until(LONG, || count.load(Ordering::SeqCst) >= 20
        && ws_count.load(Ordering::SeqCst) >= 20));
    for binary in [None, Some("/bin/false")] {
        let mut args = vec!["upgrade"];
        if let Some(b) = binary {
            args.extend(["--binary", b]);
        }
        let out = a.ctl_binary(&args);
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(1), "{answer}\n{}", a.log());
        assert!(answer.contains("upgrade failed, still serving"), "{answer}");
    }
    assert!(a.wait_log("handover called off", TIMEOUT), "{}", a.log());
    let (then, ws_then) = (
        count.load(Ordering::SeqCst),
        ws_count.load(Ordering::SeqCst),
    );
    assert!(wait_until(LONG, || count.load(Ordering::SeqCst)
        >= then + 20
        && ws_count.load(Ordering::SeqCst) >= ws_then + 20));
    stop.store(true, Ordering::SeqCst);
    let mut acked = pub_b.join().unwrap();
    acked.extend(pub_ws.join().unwrap());

    // A's own publishes go through Redis again, and its feed delivers.
    let r = a.admin_post("/pub?channel=c", b"via a");
    assert_eq!(r.status, 200, "{}", r.text());
    acked.push((
        "c".into(),
        r.json()["seq"].as_u64().unwrap(),
        "via a".into(),
    ));
    b.publish("c", "end");
    for (who, sub) in [("ws", &mut ws), ("sse", &mut sse)] {
        let got = sub.read_until_end(who, "c");
        check(who, "c", &got, &acked);
    }
    assert_eq!(a.redis_state().as_deref(), Some("up"));
    assert!(a.ctl_binary(&["stats"]).status.success());
}
