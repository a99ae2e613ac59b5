//! TLS on the edge: `wss://` and `https://` with real clients (rustls, curl, python
//! `websockets`), several certificates by SNI, expired and wrong-host certificates,
//! stalled and garbage handshakes, reloads with connections open, session resumption,
//! and the admin port over HTTPS. The harness makes its own CA ([`Pki`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use pushedge_tests::tls::{tls_args, wss, Pki};
use pushedge_tests::{json, Server, TIMEOUT};
use rustls::HandshakeKind;
use tungstenite::Message;

fn start_tls(pki: &Pki, extra: &[&str]) -> (Server, pushedge_tests::tls::Leaf) {
    let leaf = pki.leaf("server", &["localhost", "127.0.0.1"], false);
    let mut args: Vec<String> = tls_args(&leaf);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), leaf)
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The next data message of a WebSocket subscriber, as JSON.
fn next_data<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> serde_json::Value {
    loop {
        let m = ws.read().expect("read a message");
        if let Message::Text(_) = m {
            let v: serde_json::Value = serde_json::from_str(&text(m)).expect("JSON");
            if v["type"] == "data" {
                return v;
            }
        }
    }
}

#[test]
fn websocket_sse_and_poll_work_over_tls_1_2_and_1_3() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &["--set", "max_message_bytes=300000"]);
    for (name, client) in [
        ("1.3", pki.client_version(&rustls::version::TLS13)),
        ("1.2", pki.client_version(&rustls::version::TLS12)),
    ] {
        let ch = format!("tls{}", name.replace('.', ""));
        let mut ws = wss(&client, s.addr, "localhost", &format!("/ws?channel={ch}"));
        s.wait_subscribers(&ch, 1);
        // Small, and larger than one TLS record (16 KiB), in order.
        let big = "x".repeat(200_000);
        s.publish(&ch, "hello");
        s.publish(&ch, &big);
        assert_eq!(next_data(&mut ws)["content"], "hello", "TLS {name}");
        assert_eq!(next_data(&mut ws)["content"], big.as_str(), "TLS {name}");
        // The client's own frames are decrypted too (a ws op).
        ws.send(Message::text(
            json!({"op": "sub", "channel": format!("{ch}b"), "id": 1}).to_string(),
        ))
        .expect("send op");
        s.wait_subscribers(&format!("{ch}b"), 1);
        // SSE and a long-poll, resuming from the start.
        let sse = client
            .request(
                s.addr,
                "localhost",
                &format!("GET /sse?channel={ch}&since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            )
            .err();
        // The SSE stream stays open: the read times out; the events came first.
        assert!(sse.is_some(), "an SSE stream does not end by itself");
        let poll = client
            .request(
                s.addr,
                "localhost",
                &format!(
                    "GET /poll?channel={ch}&seq=0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                ),
            )
            .expect("poll over TLS");
        assert!(poll.starts_with("HTTP/1.1 200"), "{poll}");
        assert!(poll.contains("hello"), "{poll}");
        ws.close(None).expect("close");
    }
}

#[test]
fn every_cipher_suite_carries_messages_both_ways() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &[]);
    let mut n = 0;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for suite in ["AES_128_GCM", "AES_256_GCM", "CHACHA20"] {
            n += 1;
            let ch = format!("suite{n}");
            let client = pki.client_suite(v, suite);
            let mut ws = wss(&client, s.addr, "localhost", "/ws?channel=x");
            let sock = ws.get_ref();
            let negotiated = format!("{:?}", sock.conn.negotiated_cipher_suite().unwrap());
            assert!(negotiated.contains(suite), "{negotiated}");
            ws.send(Message::text(
                json!({"op": "sub", "channel": &ch, "id": 1}).to_string(),
            ))
            .unwrap();
            s.wait_subscribers(&ch, 1);
            s.publish(&ch, &format!("over {negotiated}"));
            assert_eq!(
                next_data(&mut ws)["content"],
                format!("over {negotiated}").as_str()
            );
        }
    }
}

#[test]
fn a_slow_tls_consumer_is_cut_and_what_it_was_sent_still_decrypts() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &["--set", "slow_consumer_bytes=65536"]);
    let client = pki.client();
    let mut slow = wss(&client, s.addr, "localhost", "/ws?channel=slow");
    let mut fast = wss(&client, s.addr, "localhost", "/ws?channel=slow");
    s.wait_subscribers("slow", 2);
    let body = "y".repeat(60_000);
    // The fast one reads as it goes; the slow one reads nothing until the end.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            // Until the server goes away at the end of the test.
            while let Ok(Message::Text(t)) = fast.read() {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if let Some(seq) = v["seq"].as_u64() {
                    received.store(seq, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    let mut n = 0;
    let tripped = pushedge_tests::wait_for(Duration::from_secs(30), || {
        for _ in 0..10 {
            n = s.publish("slow", &body);
        }
        assert!(
            pushedge_tests::wait_until(TIMEOUT, || received
                .load(std::sync::atomic::Ordering::SeqCst)
                == n),
            "the fast reader fell behind"
        );
        (s.metric("pushedge_slow_consumer_closes_total") >= 1.0).then_some(())
    });
    assert!(
        tripped.is_some(),
        "no slow-consumer close after {n} messages"
    );
    drop(reader);
    // What reached the slow one decrypts record after record, up to the close frame.
    let mut data = 0;
    let code = loop {
        match slow.read() {
            Ok(Message::Text(_)) => data += 1,
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("after {data} messages: {e}"),
        }
    };
    // (What was encrypted before the cut is kept whole, so it all arrives.)
    assert!(data > 0 && data <= n, "{data} of {n}");
    assert_eq!(code, Some(1008), "closed as a slow consumer");
}

#[test]
fn curl_and_python_websockets_trust_the_test_ca() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &[]);
    s.publish("pyc", "before");
    // curl, verifying against the test CA.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.ca_file())
        .arg(format!(
            "https://localhost:{}/poll?channel=pyc&seq=0",
            s.addr.port()
        ))
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("before"), "{body}");
    // python websockets with an ssl context trusting the CA (it offers permessage-deflate).
    let script = r#"
import asyncio, ssl, sys, websockets
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    async with websockets.connect(sys.argv[2], ssl=ctx, open_timeout=5) as ws:
        print("open", flush=True)
        msg = await asyncio.wait_for(ws.recv(), 5)
        print(msg, flush=True)
asyncio.run(main())
"#;
    let url = format!("wss://localhost:{}/ws?channel=pyc&since=0", s.addr.port());
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(pki.ca_file())
        .arg(&url)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python websockets: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"before\""), "{stdout}");
}

#[test]
fn sni_picks_the_certificate_and_a_wrong_host_is_refused_by_the_client() {
    let pki = Pki::new();
    let main_leaf = pki.leaf("main", &["localhost"], false);
    let other = pki.leaf("other", &["other.test"], false);
    // A plain listener and a TLS one with two certificates, on one server.
    let s = Server::start(&[
        "--set",
        &format!(
            r#"listener=[{{addr="127.0.0.1:0"}},{{addr="127.0.0.1:0",tls={{cert={:?},key={:?},sni=[{{cert={:?},key={:?}}}]}}}}]"#,
            main_leaf.cert, main_leaf.key, other.cert, other.key
        ),
    ]);
    let line = s
        .log()
        .lines()
        .find(|l| l.contains(" ready: "))
        .unwrap()
        .to_string();
    let tls_addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listeners="))
        .and_then(|l| l.split(',').nth(1))
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    // The plain listener stays plain.
    assert_eq!(s.get("/poll?channel=x&timeout=0").status, 200);
    let client = pki.client();
    let peer = |name: &str| -> Result<Vec<u8>, std::io::Error> {
        let c = client.connect(tls_addr, name)?;
        Ok(c.conn.peer_certificates().expect("certificates")[0].to_vec())
    };
    assert_eq!(peer("localhost").unwrap(), main_leaf.der);
    assert_eq!(peer("other.test").unwrap(), other.der);
    // A name neither certificate has: the default comes, and the client refuses it.
    let err = peer("wrong.test").expect_err("a certificate for another name");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // curl says so too.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.ca_file())
        .args([
            "--resolve",
            &format!("wrong.test:{}:127.0.0.1", tls_addr.port()),
        ])
        .arg(format!(
            "https://wrong.test:{}/poll?channel=x",
            tls_addr.port()
        ))
        .output()
        .expect("curl runs");
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_expired_certificate_is_refused_by_clients() {
    let pki = Pki::new();
    let old = pki.leaf("old", &["localhost"], true);
    let args = tls_args(&old);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let err = pki
        .client()
        .connect(s.addr, "localhost")
        .expect_err("an expired certificate");
    assert!(err.to_string().contains("expired"), "{err}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.ca_file())
        .arg(format!(
            "https://localhost:{}/poll?channel=x",
            s.addr.port()
        ))
        .output()
        .expect("curl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(60), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
}

/// Reads until EOF or reset; how long it took.
fn time_to_close(sock: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return (start.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn stalled_and_garbage_handshakes_are_cut() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &["--set", "handshake_timeout_secs=1"]);
    // Half a ClientHello, then nothing: the handshake timeout closes it.
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Plain HTTP instead of a ClientHello: refused at once with an alert.
    let mut garbage = TcpStream::connect(s.addr).unwrap();
    garbage
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (t, got) = time_to_close(&mut garbage, Duration::from_secs(5));
    assert!(t < Duration::from_millis(900), "garbage held {t:?}");
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    let (t, _) = time_to_close(&mut stalled, Duration::from_secs(5));
    assert!(
        t >= Duration::from_millis(500) && t < Duration::from_secs(4),
        "stalled handshake closed after {t:?}"
    );
    // The server still serves.
    let mut ws = wss(&pki.client(), s.addr, "localhost", "/ws?channel=after");
    s.wait_subscribers("after", 1);
    s.publish("after", "still here");
    assert_eq!(next_data(&mut ws)["content"], "still here");
}

#[test]
fn reload_serves_new_certificates_and_open_connections_keep_their_session() {
    let pki = Pki::new();
    let (s, leaf) = start_tls(&pki, &[]);
    let client = pki.client();
    let mut ws = wss(&client, s.addr, "localhost", "/ws?channel=reload");
    s.wait_subscribers("reload", 1);
    // New certificate files at the same paths, then `ctl tls reload`.
    let new = pki.leaf("new", &["localhost", "127.0.0.1"], false);
    std::fs::copy(&new.cert, &leaf.cert).unwrap();
    std::fs::copy(&new.key, &leaf.key).unwrap();
    let out = s.ctl_binary(&["tls", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"reloaded\""));
    // (A client without the session: a resumed one is not sent the certificate.)
    let fresh = pki.client().connect(s.addr, "localhost").unwrap();
    assert_eq!(
        fresh.conn.peer_certificates().unwrap()[0].as_ref(),
        &new.der[..]
    );
    // The open WebSocket goes on, in both directions.
    s.publish("reload", "after reload");
    assert_eq!(next_data(&mut ws)["content"], "after reload");
    ws.send(Message::text(json!({"op": "ping", "id": 7}).to_string()))
        .expect("send");
    // A file that does not load: answered with the error, the current certificates stay.
    std::fs::write(&leaf.key, "not a key").unwrap();
    let out = s.ctl_binary(&["tls", "reload"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("TLS reload failed"), "{said}");
    let still = pki.client().connect(s.addr, "localhost").unwrap();
    assert_eq!(
        still.conn.peer_certificates().unwrap()[0].as_ref(),
        &new.der[..]
    );
    // SIGHUP reloads too (and logs the outcome).
    std::fs::copy(&new.key, &leaf.key).unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log("SIGHUP: TLS certificates reloaded", TIMEOUT),
        "{}",
        s.log()
    );
}

#[test]
fn a_reconnect_resumes_its_session_with_tls_1_2_and_1_3() {
    let pki = Pki::new();
    let (s, _) = start_tls(&pki, &[]);
    for client in [
        pki.client_version(&rustls::version::TLS13),
        pki.client_version(&rustls::version::TLS12),
    ] {
        // A first connection with a request (TLS 1.3 tickets come after the handshake).
        let head = "GET /poll?channel=r&seq=0&timeout=0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut first = client.connect(s.addr, "localhost").unwrap();
        assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
        first.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = first.read_to_end(&mut out);
        let again = client.connect(s.addr, "localhost").unwrap();
        assert_eq!(
            again.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{:?}",
            again.conn.protocol_version()
        );
    }
}

#[test]
fn the_admin_port_speaks_https_when_it_has_a_certificate() {
    let pki = Pki::new();
    let leaf = pki.leaf("admin", &["localhost"], false);
    let s = Server::start(&[
        "--set",
        &format!("admin_tls_cert={}", leaf.cert.display()),
        "--set",
        &format!("admin_tls_key={}", leaf.key.display()),
    ]);
    let mut ws = pushedge_tests::Ws::connect(s.addr, "/ws?channel=adm");
    // Publish over HTTPS with curl (keep-alive: two requests on one connection).
    let url = format!("https://localhost:{}/pub?channel=adm", s.admin_addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.ca_file())
        .args(["-d", "one", &url, "--next", "--cacert"])
        .arg(pki.ca_file())
        .args(["-d", "two", &url])
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body.matches("\"ok\"").count(), 2, "{body}");
    for want in ["one", "two"] {
        let v = loop {
            let v = ws.recv_json_within(TIMEOUT);
            if v["type"] == "data" {
                break v;
            }
        };
        assert_eq!(v["content"], want);
    }
    // Plain HTTP to it gets no answer but an alert and a close.
    let mut plain = TcpStream::connect(s.admin_addr).unwrap();
    plain
        .write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (_, got) = time_to_close(&mut plain, Duration::from_secs(5));
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
}
