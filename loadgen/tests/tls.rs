//! loadgen's TLS against the real pushedge server with a TLS subscriber listener
//! (`--set tls_cert=... --set tls_key=...`, a certificate made here with rcgen): every
//! transport over TLS, certificate checks, handshake mode with and without resumption,
//! storm reconnects resuming their sessions.

mod common;

use common::{args, json_run, Certs, Server};
use serde_json::Value;

fn tls_server(certs: &Certs, extra: &[&str]) -> Server {
    let mut sets = certs.sets();
    sets.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    Server::start_with(&refs)
}

/// `loadgen fanout` of 10 messages per channel; `url` names its channels `{prefix}{c}`.
fn fanout_tls(
    server: &Server,
    url: &str,
    prefix: &str,
    tls: &[&str],
    conns: u64,
    channels: u64,
) -> Value {
    let mut a = args(&[
        "fanout",
        "--url",
        url,
        "--publish",
        &format!("http://{}/pub?channel={prefix}{{c}}", server.admin),
        "--conns",
        &conns.to_string(),
        "--channels",
        &channels.to_string(),
        "--messages",
        "10",
        "--rate",
        "0",
        "--drain",
        "10",
        "--json",
    ]);
    a.extend(args(tls));
    json_run(a)
}

fn assert_delivered(r: &Value, conns: u64, messages: u64) {
    assert_eq!(r["connect"]["established"], conns, "{r}");
    assert_eq!(r["connect"]["failed"], 0, "{r}");
    assert_eq!(r["drops"]["dropped"], 0, "{r}");
    let f = &r["fanout"];
    assert_eq!(f["delivered"], conns * messages, "{f}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "seq_errors",
        "foreign",
    ] {
        assert_eq!(f[k], 0, "{k} in {f}");
    }
}

#[test]
fn websocket_over_tls_verified_and_insecure() {
    let certs = Certs::new();
    let server = tls_server(&certs, &[]);
    let ca = certs.ca.to_str().unwrap();
    let port = server.sub.port();
    // Checked against the CA, by IP address and by name.
    for (i, host) in ["127.0.0.1", "localhost"].iter().enumerate() {
        let prefix = format!("v{i}");
        let url = format!("wss://{host}:{port}/ws?channel={prefix}{{c}}");
        let r = fanout_tls(
            &server,
            &url,
            &prefix,
            &["--cacert", ca, "--procs", "2"],
            30,
            2,
        );
        assert_eq!(r["transport"], "ws");
        assert_delivered(&r, 30, 10);
        let t = &r["tls"];
        assert_eq!(t["server_name"], *host, "{t}");
        assert_eq!(t["verify"], "ca");
        assert_eq!(t["handshakes"], 30, "{t}");
        assert_eq!(
            t["full"].as_u64().unwrap() + t["resumed"].as_u64().unwrap(),
            30
        );
        assert_eq!(t["full_us"]["count"], t["full"], "{t}");
        assert_eq!(t["by_version"]["1.3"], 30, "{t}");
    }
    // --tls under a ws:// URL, --insecure.
    let url = format!("ws://127.0.0.1:{port}/ws?channel=i{{c}}");
    let r = fanout_tls(&server, &url, "i", &["--tls", "--insecure"], 20, 1);
    assert_delivered(&r, 20, 10);
    assert_eq!(r["tls"]["verify"], "insecure");
    // Plain runs have no tls part.
    let plain = Server::start();
    let url = format!("ws://{}/ws?channel=p{{c}}", plain.sub);
    let r = fanout_tls(&plain, &url, "p", &[], 5, 1);
    assert_delivered(&r, 5, 10);
    assert!(r["tls"].is_null(), "{r}");
}

#[test]
fn every_transport_over_tls() {
    let certs = Certs::new();
    let server = tls_server(&certs, &["socketio=true"]);
    let ca = certs.ca.to_str().unwrap();
    let port = server.sub.port();
    for t in ["sse", "stream", "poll"] {
        let url = format!("https://localhost:{port}/{t}?channel={t}{{c}}");
        let r = fanout_tls(&server, &url, t, &["--cacert", ca], 12, 3);
        assert_eq!(r["transport"], t, "{r}");
        assert_delivered(&r, 12, 10);
        assert_eq!(r["tls"]["handshakes"], 12, "{t}: {r}");
    }
    let url = format!("wss://localhost:{port}/socket.io/");
    let r = fanout_tls(&server, &url, "", &["--cacert", ca], 10, 2);
    assert_eq!(r["transport"], "socketio", "{r}");
    assert_delivered(&r, 10, 10);
}

/// One `loadgen handshake` run; returns its report.
fn handshakes(url: &str, extra: &[&str]) -> Value {
    let mut a = args(&[
        "handshake",
        "--url",
        url,
        "--conns",
        "4",
        "--duration",
        "1",
        "--procs",
        "1",
        "--json",
    ]);
    a.extend(args(extra));
    json_run(a)
}

#[test]
fn handshake_mode_full_and_resumed() {
    let certs = Certs::new();
    let server = tls_server(&certs, &[]);
    let ca = certs.ca.to_str().unwrap();
    let url = format!("wss://localhost:{}/ws?channel=hs", server.sub.port());

    let r = handshakes(&url, &["--cacert", ca]);
    assert_eq!(r["mode"], "handshake");
    let h = &r["handshake"];
    let done = h["completed"].as_u64().unwrap();
    assert!(done > 20, "{h}");
    assert_eq!(h["failed"], 0, "{h}");
    assert_eq!(h["concurrency"], 4);
    assert!(h["per_s"].as_f64().unwrap() > 0.0, "{h}");
    assert_eq!(h["latency_us"]["count"], done);
    assert_eq!(r["drops"]["open_at_end"], 0, "{r}");
    let t = &r["tls"];
    // The first 4 have no session to resume; after them, every one resumes.
    assert!(t["full"].as_u64().unwrap() <= 8, "{t}");
    assert!(t["resumed"].as_u64().unwrap() + 8 >= done, "{t}");
    assert_eq!(t["resumed_us"]["count"], t["resumed"]);

    let r = handshakes(&url, &["--cacert", ca, "--no-resume"]);
    let t = &r["tls"];
    assert_eq!(t["resumption"], false);
    assert_eq!(t["resumed"], 0, "{t}");
    assert!(t["full"].as_u64().unwrap() >= r["handshake"]["completed"].as_u64().unwrap());

    // TLS 1.2: full and resumed too.
    let r = handshakes(&url, &["--cacert", ca, "--tls-version", "1.2"]);
    let t = &r["tls"];
    assert!(t["by_version"]["1.2"].as_u64().unwrap() > 20, "{t}");
    assert!(t["by_version"]["1.3"].is_null(), "{t}");
    assert!(t["resumed"].as_u64().unwrap() > 10, "{t}");

    // Plain TCP + WebSocket upgrade, for comparison.
    let plain = Server::start();
    let r = handshakes(&format!("ws://{}/ws?channel=hs", plain.sub), &[]);
    assert!(r["handshake"]["completed"].as_u64().unwrap() > 20, "{r}");
    assert!(r["tls"].is_null());
}

#[test]
fn storm_reconnects_resume_their_sessions() {
    let certs = Certs::new();
    let server = tls_server(&certs, &[]);
    let r = json_run(args(&[
        "storm",
        "--url",
        &format!("wss://127.0.0.1:{}/ws?channel=st", server.sub.port()),
        "--cacert",
        certs.ca.to_str().unwrap(),
        "--conns",
        "10",
        "--churn",
        "40",
        "--duration",
        "1.5",
        "--json",
    ]));
    let reconnects = r["storm"]["churn_closed"].as_u64().unwrap();
    assert!(reconnects > 10, "{r}");
    let t = &r["tls"];
    assert!(t["full"].as_u64().unwrap() <= 10, "{t}");
    assert!(t["resumed"].as_u64().unwrap() + 2 >= reconnects, "{t}");
}

/// `hold` of 5 connections for no time; returns its report.
fn hold5(url: &str, extra: &[&str]) -> Value {
    let mut a = args(&[
        "hold",
        "--url",
        url,
        "--conns",
        "5",
        "--duration",
        "0",
        "--timeout",
        "5",
        "--json",
    ]);
    a.extend(args(extra));
    json_run(a)
}

#[test]
fn certificate_and_protocol_failures_are_counted() {
    let certs = Certs::new();
    let server = tls_server(&certs, &[]);
    let port = server.sub.port();
    let wss = format!("wss://127.0.0.1:{port}/ws?channel=f");
    let failed = |r: &Value, reason: &str| {
        assert_eq!(r["connect"]["established"], 0, "{r}");
        assert_eq!(r["connect"]["failed_by_reason"][reason], 5, "{r}");
    };
    // A CA that did not sign the server's certificate.
    failed(
        &hold5(&wss, &["--cacert", certs.other_ca.to_str().unwrap()]),
        "tls_cert_unknown_issuer",
    );
    // A name the certificate is not for.
    failed(
        &hold5(
            &wss,
            &[
                "--cacert",
                certs.ca.to_str().unwrap(),
                "--sni",
                "other.example",
            ],
        ),
        "tls_cert_not_valid_for_name",
    );
    // ...which --insecure accepts.
    let r = hold5(&wss, &["--insecure", "--sni", "other.example"]);
    assert_eq!(r["connect"]["established"], 5, "{r}");
    // Plain WebSocket to the TLS port: no 101.
    let r = hold5(&format!("ws://127.0.0.1:{port}/ws?channel=f"), &[]);
    assert_eq!(r["connect"]["established"], 0, "{r}");
    assert_eq!(r["connect"]["failed"], 5, "{r}");
    // TLS to a plain port: the answer is not TLS.
    let plain = Server::start();
    let r = hold5(
        &format!("wss://127.0.0.1:{}/ws?channel=f", plain.sub.port()),
        &["--insecure"],
    );
    assert_eq!(r["connect"]["established"], 0, "{r}");
    assert_eq!(r["connect"]["failed"], 5, "{r}");
}
