//! One client cannot take the service away from the others: each attack a hostile or
//! careless client can make, scaled down with `--set` to run in seconds, with a
//! well-behaved client connecting, receiving and publishing while it goes on, and the
//! documented answer for the attacker.

use pushedge_tests::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"t0ps3cret";

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn assert_error(v: &Value, code: u16) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The `max_connections` the server resolved, from its start-up log line.
fn resolved_max_connections(s: &Server) -> usize {
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("descriptors: RLIMIT_NOFILE"))
        .unwrap_or_else(|| panic!("no descriptor budget line:\n{log}"));
    line.split("max_connections ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no max_connections in: {line}"))
}

/// A well-behaved client's round: a new subscriber gets a publish, the admin port and
/// the control socket answer.
fn well_behaved_round(s: &Server, channel: &str, ws: &mut Ws) {
    let seq = s.publish(channel, "still served");
    let got = ws.recv_json();
    assert_eq!(
        (got["seq"].as_u64(), got["content"].as_str()),
        (Some(seq), Some("still served"))
    );
    let stats = s.ctl().cmd_within("stats", TIMEOUT);
    assert_eq!(stats["type"], "stats", "{stats}");
}

// ------------------------------------------------------------------ descriptor budget

/// Starts a server limited to 300 descriptors; returns it and its `max_connections`.
fn small_server() -> (Server, usize) {
    let s = Server::start_with_nofile(
        &[
            "--set",
            "admin_max_connections=8",
            "--set",
            "accept_pause_ms=100",
            "--set",
            "handshake_timeout_secs=60",
        ],
        Some(300),
    );
    let max = resolved_max_connections(&s);
    assert!(max > 16, "{max}");
    (s, max)
}

#[test]
fn the_descriptor_budget_keeps_the_admin_port_and_the_control_socket_answering() {
    let (s, max) = small_server();
    let mut ws = s.ws("/ws?channel=b");
    s.wait_subscribers("b", 1);
    // Established subscribers past what the table holds: the ones over the cap are
    // refused with a reason.
    let mut refused = 0;
    let mut flood = Vec::new();
    for _ in 0..max + 40 {
        match Ws::try_connect(s.addr, "/ws?channel=f") {
            Ok(w) => flood.push(w),
            Err(tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 503);
                let body =
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
                assert!(body.contains("max_connections"), "{body}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((flood.len(), refused), (max - 1, 41));
    assert_eq!(
        s.metric("pushedge_connections_rejected_total{reason=\"max_connections\"}"),
        41.0
    );
    assert!(
        s.wait_log("max_connections (", TIMEOUT),
        "logged:\n{}",
        s.log()
    );
    let r = s.get("/ping");
    assert_eq!(r.status, 503, "{}", r.text());
    // The admin port, the control socket and an established subscriber still work.
    well_behaved_round(&s, "b", &mut ws);
    assert_eq!(s.admin_get("/info").status, 200);
    // It does not spin on a listener it cannot take from.
    let before = cpu_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(s.pid()) - before;
    assert!(used < 30, "{used} ticks of CPU in 1 s while full");
    // Once the flood leaves, new subscribers get in.
    drop(flood);
    assert!(
        wait_until(TIMEOUT, || s.get("/ping").status == 200),
        "accepting resumes"
    );
    let mut late = s.ws("/ws?channel=b");
    s.wait_subscribers("b", 2);
    s.publish("b", "after");
    assert_eq!(late.recv_json()["content"], "after");
}

#[test]
fn at_max_connections_a_newcomer_takes_the_place_of_a_slowloris() {
    let (s, max) = small_server();
    let mut ws = s.ws("/ws?channel=b");
    s.wait_subscribers("b", 1);
    // Connections that never send a request head, more than fit.
    let mut idle: Vec<Conn> = (0..max + 20)
        .filter_map(|_| Conn::try_connect(s.addr).ok())
        .collect();
    assert!(
        wait_until(TIMEOUT, || s.metric("pushedge_connections_evicted_total")
            >= 20.0),
        "{} connected of {}, evicted {}, full {}",
        idle.len(),
        max + 20,
        s.metric("pushedge_connections_evicted_total"),
        s.metric("pushedge_connections_rejected_total{reason=\"max_connections\"}")
    );
    // A newcomer is served, and so is an established subscriber.
    let r = s.get("/ping");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut newcomer = s.ws("/ws?channel=b");
    s.wait_subscribers("b", 2);
    s.publish("b", "x");
    assert_eq!(ws.recv_json()["content"], "x");
    assert_eq!(newcomer.recv_json()["content"], "x");
    // The ones that gave way were told.
    let told = idle
        .iter_mut()
        .filter_map(|c| c.read_response(Duration::from_millis(20)).ok())
        .filter(|r| r.status == 503 && r.text().contains("too slow"))
        .count();
    assert!(told >= 20, "{told}");
}

#[test]
fn a_max_connections_above_the_descriptor_budget_is_refused_at_start() {
    let base = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--control",
        "",
    ];
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let mut args: Vec<&str> = base.to_vec();
    args[6] = sock.to_str().unwrap();
    let mut too_many = args.clone();
    too_many.extend([
        "--set",
        "admin_max_connections=8",
        "--set",
        "max_connections=100000",
    ]);
    let out = run_binary_with_nofile(&too_many, Some(300));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("max_connections 100000 is above"), "{err}");
    assert!(err.contains("ulimit -n"), "{err}");
    // A limit that leaves nothing for subscribers.
    let out = run_binary_with_nofile(&args, Some(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin_max_connections"), "{err}");
    assert!(!sock.exists(), "nothing is left behind");
}

// ------------------------------------------------------------------ admin port

const ADMIN_LIMITS: [&str; 10] = [
    "--set",
    "admin_max_connections=12",
    "--set",
    "admin_max_connections_per_ip=6",
    "--set",
    "admin_head_timeout_secs=1",
    "--set",
    "admin_body_timeout_secs=1",
    "--set",
    "admin_idle_timeout_secs=2",
];

#[test]
fn idle_admin_connections_cannot_lock_publishers_out() {
    let s = Server::start(&ADMIN_LIMITS);
    let mut ws = s.ws("/ws?channel=a");
    s.wait_subscribers("a", 1);
    // Silent connections from one address, up to its share, and then from others up to
    // the global cap.
    let mut silent: Vec<Conn> = (0..6).map(|_| Conn::connect(s.admin_addr)).collect();
    silent.extend((0..6).map(|_| Conn::connect_from(s.admin_addr, loopback(2)).unwrap()));
    std::thread::sleep(Duration::from_millis(200));
    // A publisher still gets in, from the attacker's address and from another: each
    // takes the place of the oldest connection that has sent nothing.
    for (n, source) in [(1, loopback(1)), (2, loopback(4))] {
        if n == 2 {
            // The global cap full again (the first publisher's connection is gone).
            silent.push(Conn::connect_from(s.admin_addr, loopback(3)).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut c = Conn::connect_from(s.admin_addr, source).unwrap();
        c.send_request(
            "POST",
            "/pub?channel=a",
            &[],
            format!("during {n}").as_bytes(),
            true,
        );
        let r = c.read_response(TIMEOUT).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(ws.recv_json()["content"], format!("during {n}"));
    }
    // The ones that gave way were told why; the rest get 408 at the head timeout.
    let (mut evicted, mut timed_out) = (0, 0);
    for c in &mut silent {
        let r = c
            .read_response(Duration::from_secs(3))
            .expect("an answer before the close");
        match r.status {
            503 => {
                assert!(r.text().contains("admin_max_connections"), "{}", r.text());
                evicted += 1;
            }
            408 => timed_out += 1,
            other => panic!("{other}: {}", r.text()),
        }
        assert!(c.closed_within(TIMEOUT));
    }
    assert_eq!((evicted, timed_out), (2, 11));
    // Connections that are served and idle are not pushed out: past the cap a newcomer
    // is refused.
    let mut busy: Vec<Conn> = Vec::new();
    for i in 0..12 {
        let mut c = Conn::connect_from(s.admin_addr, loopback(5 + (i / 6) as u8)).unwrap();
        c.send_request("GET", "/info", &[], b"", false);
        assert_eq!(c.read_response(TIMEOUT).unwrap().status, 200);
        busy.push(c);
    }
    let mut over = Conn::connect_from(s.admin_addr, loopback(9)).unwrap();
    let r = over.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("(admin_max_connections)"), "{}", r.text());
    // They go at the idle timeout, and publishing works again.
    for c in &mut busy {
        assert!(c.closed_within(Duration::from_secs(4)));
    }
    let seq = s.publish("a", "after");
    assert_eq!(ws.recv_json()["seq"], seq);
}

#[test]
fn half_finished_admin_requests_time_out() {
    let s = Server::start(&ADMIN_LIMITS);
    let started = Instant::now();
    // A head that never ends.
    let mut head = Conn::connect(s.admin_addr);
    head.send(b"POST /pub?channel=x HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    // A body shorter than announced.
    let mut body = Conn::connect(s.admin_addr);
    body.send(b"POST /pub?channel=x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    // A chunked body that stops in the middle.
    let mut chunked = Conn::connect(s.admin_addr);
    chunked
        .send(b"POST /pub?channel=x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        .unwrap();
    // Meanwhile a publisher is served.
    s.publish("y", "meanwhile");
    for (name, c, reason) in [
        ("head", &mut head, "head"),
        ("body", &mut body, "body"),
        ("chunked", &mut chunked, "body"),
    ] {
        let r = c
            .read_response(Duration::from_secs(4))
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(r.status, 408, "{name}: {}", r.text());
        assert!(r.text().contains(reason), "{name}: {}", r.text());
        assert!(c.closed_within(TIMEOUT), "{name}: closed");
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nothing of them was published.
    assert_eq!(s.channel_info("x")["seq"], 0);
    // A keep-alive connection idle after its answer is closed without an answer.
    let mut idle = Conn::connect(s.admin_addr);
    idle.send_request("GET", "/info", &[], b"", false);
    assert_eq!(idle.read_response(TIMEOUT).unwrap().status, 200);
    let t = Instant::now();
    assert_eq!(idle.read_to_eof(Duration::from_secs(5)), Ok(Vec::new()));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_chunked_body_dribbled_in_small_pieces_is_published_whole() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=d");
    s.wait_subscribers("d", 1);
    let mut c = Conn::connect(s.admin_addr);
    c.send(b"POST /pub?channel=d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut want = String::new();
    for i in 0..2000 {
        let piece = format!("{:04}", i % 10_000);
        want.push_str(&piece);
        c.send(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .unwrap();
    }
    c.send(b"0\r\n\r\n").unwrap();
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ws.recv_json()["content"], want.as_str());
}

#[test]
fn a_bad_admin_token_closes_the_connection() {
    let s = Server::start(&["--set", "admin_token=letmein"]);
    let mut c = Conn::connect(s.admin_addr);
    c.send_request(
        "POST",
        "/pub?channel=a",
        &[("Authorization", "Bearer nope")],
        b"x",
        false,
    );
    let r = c.read_response(TIMEOUT).unwrap();
    assert_eq!(r.status, 401);
    assert!(c.closed_within(TIMEOUT), "not kept after a bad token");
    let r = s.admin(
        "POST",
        "/pub?channel=a",
        &[("Authorization", "Bearer letmein")],
        b"x",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

// ------------------------------------------------------------------ channel table

#[test]
fn channel_creation_floods_are_rate_limited_then_closed() {
    let s = Server::start(&[
        "--set",
        "max_channel_creates_per_conn=2",
        "--set",
        "channel_creates_burst=10",
    ]);
    s.publish("existing", "kept");
    let mut attacker = s.ws("/ws");
    for i in 0..40 {
        attacker.send_json(&json!({"op": "sub", "channel": format!("flood{i}")}));
    }
    // Subs that create nothing are not limited.
    attacker.send_json(&json!({"op": "sub", "channel": "existing", "since": 1}));
    attacker.send_json(&json!({"op": "ping"}));
    let mut refused = 0;
    let mut oks = 0;
    loop {
        let v = attacker.recv_json();
        match v["type"].as_str() {
            Some("error") => {
                assert_error(&v, 429);
                assert!(v["reason"]
                    .as_str()
                    .unwrap()
                    .contains("max_channel_creates_per_conn"));
                refused += 1;
            }
            Some("data") => assert_eq!(
                (v["channel"].as_str(), v["content"].as_str()),
                (Some("existing"), Some("kept"))
            ),
            Some("ok") => oks += 1,
            Some("pong") => break,
            _ => panic!("unexpected {v}"),
        }
    }
    let accepted = s.info()["channels"].as_u64().unwrap() as usize - 1;
    assert_eq!(accepted + refused, 40);
    assert_eq!(oks, accepted + 1, "each sub that went through answered ok");
    assert!((10..=11).contains(&accepted), "{accepted} created");
    assert!(refused >= 27, "{refused} refused");
    assert!(s.metric("pushedge_limited_total{kind=\"channel_creates\"}") >= 27.0);
    // A well-behaved client creates its channel, receives and publishes meanwhile.
    let mut ws = s.ws("/ws?channel=mine");
    s.wait_subscribers("mine", 1);
    well_behaved_round(&s, "mine", &mut ws);
    // Going on past the limit closes the connection with a reason.
    for i in 0..200 {
        attacker.send_json(&json!({"op": "sub", "channel": format!("more{i}")}));
    }
    let (code, reason) = attacker.recv_close_frame(TIMEOUT).expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("rate limit"), "{reason}");
    assert_eq!(s.metric("pushedge_limit_closes_total"), 1.0);
    // Its channels went with it: only the ones with history or subscribers remain.
    assert!(
        wait_until(TIMEOUT, || s.info()["channels"] == 2),
        "{}",
        s.info()
    );
}

#[test]
fn sub_unsub_cycles_leave_no_channels_behind() {
    let s = Server::start(&[
        "--set",
        "max_channel_creates_per_conn=100000",
        "--set",
        "channel_creates_burst=100000",
    ]);
    let mut ws = s.ws("/ws");
    for i in 0..5000 {
        let name = format!("c{i}");
        ws.op_ok(&json!({"op": "sub", "channel": name}));
        ws.op_ok(&json!({"op": "unsub", "channel": name}));
    }
    ws.send_json(&json!({"op": "ping"}));
    assert_eq!(ws.recv_json_within(Duration::from_secs(20))["type"], "pong");
    assert_eq!(
        s.info()["channels"],
        0,
        "an empty channel costs nothing after its last subscriber"
    );
    // New channels are still created for everyone (the table did not fill).
    let mut other = s.ws("/ws?channel=fresh");
    s.wait_subscribers("fresh", 1);
    s.publish("fresh", "x");
    assert_eq!(other.recv_json()["content"], "x");
}

#[test]
fn memory_comes_back_after_a_channel_flood() {
    // Many connections, each holding many channels, then gone.
    let s = Server::start(&[
        "--set",
        "max_channels_per_conn=500",
        "--set",
        "max_channel_creates_per_conn=100000",
        "--set",
        "channel_creates_burst=100000",
    ]);
    let before = rss_kib(s.pid());
    let mut flood = Vec::new();
    for c in 0..100 {
        let names: Vec<String> = (0..500).map(|i| format!("f{c}x{i}")).collect();
        let mut ws = s.ws("/ws");
        for n in &names {
            ws.op_ok(&json!({"op": "sub", "channel": n}));
        }
        ws.send_json(&json!({"op": "ping"}));
        flood.push(ws);
    }
    for ws in &mut flood {
        assert_eq!(ws.recv_json_within(Duration::from_secs(20))["type"], "pong");
    }
    assert_eq!(s.info()["channels"], 50_000);
    let during = rss_kib(s.pid());
    drop(flood);
    assert!(wait_until(Duration::from_secs(10), || s.info()["channels"] == 0));
    let mut after = rss_kib(s.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    // Allow the allocator its purge delay; RSS must come most of the way back.
    while Instant::now() < deadline && after > before + (during - before) / 4 {
        std::thread::sleep(Duration::from_millis(500));
        after = rss_kib(s.pid());
    }
    eprintln!("channel flood RSS: before {before} KiB, during {during} KiB, after {after} KiB");
    assert!(
        during > before + 10_000,
        "the flood took memory: {before} -> {during}"
    );
    assert!(
        after <= before + (during - before) / 4,
        "RSS before {before} KiB, during {during} KiB, after {after} KiB"
    );
}

#[test]
fn per_address_subscriber_limit() {
    let mut args = vec!["--set", "max_connections_per_ip=4"];
    if std::env::var("PUSHEDGE_BACKEND").as_deref() == Ok("uring") {
        args.extend(["--set", "uring_direct=false"]);
    }
    let s = Server::start(&args);
    let mut held: Vec<Ws> = (0..4).map(|_| s.ws("/ws?channel=p")).collect();
    s.wait_subscribers("p", 4);
    let r = s.get("/ping");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("max_connections_per_ip"), "{}", r.text());
    // Another address is not affected.
    let mut c = Conn::connect_from(s.addr, loopback(2)).unwrap();
    c.send_request("GET", "/ping", &[], b"", true);
    assert_eq!(c.read_response(TIMEOUT).unwrap().status, 200);
    assert_eq!(
        s.metric("pushedge_connections_rejected_total{reason=\"max_connections_per_ip\"}"),
        1.0
    );
    // A closed connection gives its place back.
    held.pop();
    assert!(wait_until(TIMEOUT, || s.get("/ping").status == 200));
    s.publish("p", "x");
    for ws in &mut held {
        assert_eq!(ws.recv_json()["content"], "x");
    }
}

#[test]
fn per_address_limits_are_refused_with_direct_descriptors() {
    let out = run_binary(&[
        "serve",
        "--backend",
        "uring",
        "--set",
        "uring_direct=true",
        "--set",
        "max_connections_per_ip=4",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uring_direct = false"));
}

// ------------------------------------------------------------------ half-finished input

#[test]
fn unfinished_messages_and_frames_are_closed_in_time() {
    let s = Server::start(&["--set", "message_timeout_secs=1"]);
    let mut ws = s.ws("/ws?channel=w");
    // A first fragment of a message that never ends (the heartbeat is far off).
    let mut fragment = RawWs::connect(s.addr, "/ws?channel=w");
    fragment.send_frame(false, 0, op::TEXT, true, &vec![b'a'; 60 * 1024]);
    // Most of one big frame.
    let mut frame = RawWs::connect(s.addr, "/ws?channel=w");
    let bytes = encode_frame(true, 0, op::TEXT, Some([1, 2, 3, 4]), &vec![b'b'; 65_000]);
    frame.conn.send(&bytes[..bytes.len() - 500]).unwrap();
    s.wait_subscribers("w", 3);
    let started = Instant::now();
    s.publish("w", "meanwhile");
    assert_eq!(ws.recv_json()["content"], "meanwhile");
    for (name, c) in [("fragment", &mut fragment), ("frame", &mut frame)] {
        let (code, reason) = c
            .recv_close(Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{name}: no close"));
        assert_eq!(code, 1008, "{name}: {reason}");
        assert!(reason.contains("message_timeout_secs"), "{name}: {reason}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.metric("pushedge_message_timeouts_total"), 2.0);
    // A slow but complete message is fine.
    let mut slow = RawWs::connect(s.addr, "/ws");
    slow.send_frame(false, 0, op::TEXT, true, br#"{"op":"#);
    std::thread::sleep(Duration::from_millis(300));
    slow.send_frame(true, 0, op::CONT, true, br#""ping"}"#);
    assert_eq!(slow.recv_json(TIMEOUT)["type"], "pong");
    well_behaved_round(&s, "w", &mut ws);
}

#[test]
fn a_dribbled_second_request_head_gets_the_handshake_timeout() {
    let s = Server::start(&["--set", "handshake_timeout_secs=1"]);
    let mut c = s.connect();
    c.send_request("GET", "/ping", &[], b"", false);
    assert_eq!(c.read_response(TIMEOUT).unwrap().status, 200);
    // The next head, one byte every 200 ms: cut about 1 s after it began.
    let started = Instant::now();
    let mut answered = None;
    for b in b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if c.send(&[*b]).is_err() {
            break;
        }
        if let Ok(r) = c.read_response(Duration::from_millis(200)) {
            answered = Some(r);
            break;
        }
    }
    let r = answered.expect("answered before the head was done");
    assert_eq!(r.status, 408, "{}", r.text());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ------------------------------------------------------------------ tokens

const AUTH: [&str; 6] = [
    "--set",
    "token_secret=t0ps3cret",
    "--set",
    "auth=token",
    "--set",
    "token_grace_secs=1",
];

fn token(claims: Value) -> String {
    jwt(&json!({"alg": "HS256", "typ": "JWT"}), &claims, SECRET)
}

#[test]
fn an_expired_token_ends_a_websocket_after_a_refresh_notice() {
    let s = Server::start(&AUTH);
    let exp = unix_now() + 2;
    let t = token(json!({"channels": ["a", "b"], "exp": exp}));
    let mut ws = s.ws(&format!("/ws?channel=a&token={t}"));
    s.wait_subscribers("a", 1);
    s.publish("a", "before");
    assert_eq!(ws.recv_json()["content"], "before");
    let notice = ws.recv_json_within(Duration::from_secs(5));
    assert_eq!(notice["type"], "refresh", "{notice}");
    assert_eq!(notice["expires"], exp);
    assert!(notice["deadline"].as_u64().unwrap() >= exp);
    // Its rights are gone until a refresh.
    ws.send_json(&json!({"op": "sub", "channel": "b"}));
    assert_error(&ws.recv_json(), 401);
    let (code, reason) = ws
        .recv_close_frame(Duration::from_secs(4))
        .expect("a close");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert_eq!(s.metric("pushedge_token_expired_closes_total"), 1.0);
}

#[test]
fn an_expired_token_ends_an_sse_stream() {
    let s = Server::start(&AUTH);
    let exp = unix_now() + 2;
    let t = token(json!({"channels": ["a"], "exp": exp}));
    let mut sse = s.sse(&format!("/sse?channel=a&token={t}"));
    s.wait_subscribers("a", 1);
    s.publish("a", "before");
    assert_eq!(sse.expect_event().data["content"], "before");
    let notice = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(notice.data["type"], "refresh", "{:?}", notice);
    // The stream ends after the grace period.
    let t0 = Instant::now();
    loop {
        match sse.next_event(Duration::from_secs(4)) {
            Err(ReadError::Closed) => break,
            Ok(e) if e.data.is_null() => continue,
            other => panic!("expected the end of the stream, got {other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    s.wait_subscribers("a", 0);
}

#[test]
fn a_refresh_op_keeps_the_connection() {
    let s = Server::start(&AUTH);
    let exp = unix_now() + 2;
    let t = token(json!({"channels": ["a"], "exp": exp}));
    let mut ws = s.ws(&format!("/ws?channel=a&token={t}"));
    s.wait_subscribers("a", 1);
    // Refusals: not a token, a token that drops a subscribed channel.
    ws.send_json(&json!({"op": "refresh", "token": "garbage"}));
    assert_error(&ws.recv_json(), 401);
    let narrower = token(json!({"channels": ["z"], "exp": unix_now() + 60}));
    ws.send_json(&json!({"op": "refresh", "token": narrower}));
    assert_error(&ws.recv_json(), 403);
    assert_eq!(
        ws.recv_json_within(Duration::from_secs(5))["type"],
        "refresh"
    );
    let later = unix_now() + 60;
    let fresh = token(json!({"channels": ["a", "b"], "exp": later}));
    ws.send_json(&json!({"op": "refresh", "token": fresh}));
    assert_eq!(
        ws.recv_json(),
        json!({"type": "refreshed", "expires": later})
    );
    // Past the old deadline it is still open, with the new token's rights.
    std::thread::sleep(Duration::from_millis(1500));
    ws.op_ok(&json!({"op": "sub", "channel": "b"}));
    s.wait_subscribers("b", 1);
    s.publish("a", "still here");
    assert_eq!(ws.recv_json()["content"], "still here");
}

#[test]
fn pub_claims_say_what_a_client_may_publish_and_from_is_stamped() {
    let mut args = AUTH.to_vec();
    args.extend(["--set", "client_publish=chat.*"]);
    let s = Server::start(&args);
    let exp = unix_now() + 600;
    let bob = token(json!({
        "sub": "bob", "exp": exp,
        "channels": ["chat.dm.bob", "chat.lobby"], "pub": ["chat.lobby"]
    }));
    let alice = token(json!({
        "sub": "alice", "exp": exp, "channels": ["chat.*"], "pub": "chat.*"
    }));
    let mut a = s.ws(&format!(
        "/ws?channel=chat.lobby,chat.dm.alice&token={alice}"
    ));
    let mut b = s.ws(&format!("/ws?channel=chat.dm.bob&token={bob}"));
    s.wait_subscribers("chat.dm.alice", 1);
    s.wait_subscribers("chat.dm.bob", 1);
    // Bob may publish to the lobby only, and cannot say he is someone else.
    b.send_json(&json!({"op": "pub", "channel": "chat.lobby", "content": "hi", "from": "alice"}));
    assert_eq!(b.recv_json()["type"], "ok");
    let got = a.recv_json();
    assert_eq!(
        (got["content"].as_str(), got["from"].as_str()),
        (Some("hi"), Some("bob")),
        "{got}"
    );
    for channel in ["chat.dm.alice", "chat.dm.bob"] {
        b.send_json(&json!({"op": "pub", "channel": channel, "content": "x"}));
        let v = b.recv_json();
        assert_error(&v, 403);
        assert!(v["reason"].as_str().unwrap().contains("pub claim"), "{v}");
    }
    // Alice's claim is a pattern; client_publish still applies on top.
    a.send_json(&json!({"op": "pub", "channel": "chat.dm.bob", "content": "hello bob"}));
    assert_eq!(a.recv_json()["type"], "ok");
    let got = b.recv_json();
    assert_eq!(got["from"], "alice");
    a.send_json(&json!({"op": "pub", "channel": "news", "content": "x"}));
    assert_error(&a.recv_json(), 403);
    // A token without a pub claim publishes nothing.
    let reader = token(json!({"exp": exp, "channels": ["chat.lobby"]}));
    let mut r = s.ws(&format!("/ws?channel=chat.lobby&token={reader}"));
    r.send_json(&json!({"op": "pub", "channel": "chat.lobby", "content": "x"}));
    assert_error(&r.recv_json(), 403);
    // The backend's messages carry no sender.
    s.publish("chat.lobby", "from the backend");
    let got = a.recv_json();
    assert_eq!(got["content"], "from the backend");
    assert!(got.get("from").is_none(), "{got}");
}

#[test]
fn the_client_publish_rate_is_limited_with_429s_never_silent_drops() {
    let s = Server::start(&[
        "--set",
        "client_publish=*",
        "--set",
        "client_publish_rate=2",
        "--set",
        "client_publish_burst=10",
    ]);
    let mut sub = s.ws("/ws?channel=r");
    let mut p = s.ws("/ws");
    s.wait_subscribers("r", 1);
    for i in 0..30 {
        p.send_json(&json!({"op": "pub", "channel": "r", "content": format!("m{i}")}));
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..30 {
        let v = p.recv_json();
        match v["type"].as_str() {
            Some("ok") => ok += 1,
            Some("error") => {
                assert_error(&v, 429);
                assert!(v["reason"]
                    .as_str()
                    .unwrap()
                    .contains("client_publish_rate"));
                limited += 1;
            }
            _ => panic!("{v}"),
        }
    }
    assert_eq!(ok + limited, 30, "every publish is answered");
    assert!((10..=12).contains(&ok), "{ok} accepted");
    // The subscriber got exactly the accepted ones, and history kept them only.
    for _ in 0..ok {
        assert_eq!(sub.recv_json()["type"], "data");
    }
    sub.expect_quiet();
    assert_eq!(s.channel_info("r")["seq"], ok);
    assert_eq!(
        s.metric("pushedge_limited_total{kind=\"client_publish\"}"),
        limited as f64
    );
    // The bucket refills.
    std::thread::sleep(Duration::from_millis(600));
    p.send_json(&json!({"op": "pub", "channel": "r", "content": "later"}));
    assert_eq!(p.recv_json()["type"], "ok");
}

// ------------------------------------------------------------------ origins

#[test]
fn origins_are_checked_and_cors_is_answered() {
    let s = Server::start(&[
        "--set",
        "allowed_origins=https://app.example.com,https://*.trusted.org",
    ]);
    s.publish("h", "history");
    // The WebSocket upgrade: 403 for another origin.
    let refused =
        RawWs::try_connect_with(s.addr, "/ws?channel=o", &[("Origin", "https://evil.com")]);
    let r = refused.err().expect("refused");
    assert_eq!(r.status, 403);
    assert!(r.text().contains("origin"), "{}", r.text());
    let _app = RawWs::try_connect_with(
        s.addr,
        "/ws?channel=o",
        &[("Origin", "https://app.example.com")],
    )
    .expect("an allowed origin");
    let _eu = RawWs::try_connect_with(
        s.addr,
        "/ws?channel=o",
        &[("Origin", "https://eu.trusted.org")],
    )
    .expect("a matching pattern");
    // No Origin: not a browser, allowed.
    let mut ws = s.ws("/ws?channel=o");
    s.wait_subscribers("o", 3);
    assert_eq!(
        s.metric("pushedge_connections_rejected_total{reason=\"origin\"}"),
        1.0
    );
    // HTTP transports: credentials for a matching origin, Vary: Origin.
    let r = s.get_with(
        "/poll?channel=h&seq=1",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = s.get_with("/poll?channel=h&seq=1", &[("Origin", "https://evil.com")]);
    assert_eq!(r.status, 403);
    // Preflight.
    let mut c = s.connect();
    c.send_request(
        "OPTIONS",
        "/sse?channel=o",
        &[
            ("Origin", "https://eu.trusted.org"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "last-event-id, x-custom"),
        ],
        b"",
        true,
    );
    let r = c.read_response(TIMEOUT).unwrap();
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://eu.trusted.org")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("last-event-id, x-custom")
    );
    let mut c = s.connect();
    c.send_request(
        "OPTIONS",
        "/sse?channel=o",
        &[("Origin", "https://evil.com")],
        b"",
        true,
    );
    assert_eq!(c.read_response(TIMEOUT).unwrap().status, 403);
    // JSONP is not to be sniffed as anything else.
    let r = s.get("/poll?channel=h&seq=1&callback=cb");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    s.publish("o", "x");
    assert_eq!(ws.recv_json()["content"], "x");
}

#[test]
fn any_origin_by_default_with_a_warning_when_anyone_may_publish() {
    let s = Server::start(&["--set", "client_publish=*"]);
    assert!(
        s.wait_log("any web page can publish", TIMEOUT),
        "{}",
        s.log()
    );
    s.publish("h", "history");
    let r = s.get_with(
        "/poll?channel=h&seq=1",
        &[("Origin", "https://anywhere.net")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert!(RawWs::try_connect_with(s.addr, "/ws", &[("Origin", "https://anywhere.net")]).is_ok());
    let quiet = Server::start(&[]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!quiet.log().contains("any web page can publish"));
}

// ------------------------------------------------------------------ control path

#[test]
fn a_regular_file_at_control_path_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let out = run_binary(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--control",
        path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    // A stale socket (nobody listening) is replaced.
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut s = Server::start(&["--control", sock.to_str().unwrap()]);
    assert!(TcpStream::connect(s.admin_addr).is_ok());
    let mut ctl = Ctl::connect(&sock);
    assert_eq!(ctl.cmd("stats")["type"], "stats");
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(TIMEOUT).is_some());
}
