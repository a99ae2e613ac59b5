//! loadgen against the real pushedge server: the built `loadgen` binary (coordinator and
//! child processes) drives `target/debug/pushedge` on ephemeral loopback ports.
//!
//! The server binary is `PUSHEDGE_BIN`, or `<workspace>/target/debug/pushedge`, built with
//! `cargo build -p pushedge` when missing.

mod common;

use common::{args, json_run, loadgen, Server};
use serde_json::Value;

fn fanout(
    server: &Server,
    url: &str,
    conns: u64,
    channels: u64,
    messages: u64,
    procs: u32,
) -> Value {
    json_run(args(&[
        "fanout",
        "--url",
        url,
        "--publish",
        &format!("http://{}/pub?channel={{c}}", server.admin),
        "--conns",
        &conns.to_string(),
        "--channels",
        &channels.to_string(),
        "--messages",
        &messages.to_string(),
        "--rate",
        "0",
        "--procs",
        &procs.to_string(),
        "--drain",
        "10",
        "--json",
    ]))
}

fn assert_clean_fanout(r: &Value, conns: u64, channels: u64, messages: u64) {
    assert_eq!(r["schema"], "loadgen/1");
    assert_eq!(r["connect"]["established"], conns, "{r}");
    assert_eq!(r["connect"]["failed"], 0, "{r}");
    assert_eq!(r["drops"]["dropped"], 0, "{r}");
    let f = &r["fanout"];
    assert_eq!(f["published"], channels * messages, "{f}");
    assert_eq!(f["publish_failed"], 0);
    assert_eq!(f["expected"], conns * messages);
    assert_eq!(f["delivered"], conns * messages);
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "unexpected",
        "seq_errors",
        "gaps",
        "foreign",
        "incomplete_subscribers",
    ] {
        assert_eq!(f[k], 0, "{k} in {f}");
    }
    assert_eq!(f["complete_subscribers"], conns);
    assert_eq!(f["latency_us"]["count"], conns * messages);
    let rows = f["publishes"].as_array().unwrap();
    assert_eq!(rows.len() as u64, channels * messages);
    for (p, row) in rows.iter().enumerate() {
        let (i, c) = (p as u64 / channels, p as u64 % channels);
        assert_eq!(row["i"], i);
        assert_eq!(row["channel"], format!("ch{c}"));
        assert_eq!(row["status"], 200);
        // A fresh server: the seqs of each channel are 1, 2, 3, ...
        assert_eq!(row["seq"], i + 1, "{row}");
        let receivers = conns / channels + u64::from(c < conns % channels);
        assert_eq!(row["receivers"], receivers, "{row}");
        assert!(row["first_us"].as_u64().unwrap() <= row["last_us"].as_u64().unwrap());
        for k in ["missing", "duplicates", "out_of_order"] {
            assert_eq!(row[k], 0, "{k} in {row}");
        }
    }
}

#[test]
fn websocket_fanout_delivers_everything_once_in_order() {
    let server = Server::start();
    let url = format!("ws://{}/ws?channel={{c}}", server.sub);
    let r = fanout(&server, &url, 50, 2, 20, 2);
    assert_eq!(r["transport"], "ws");
    assert_eq!(r["procs"], 2);
    assert_clean_fanout(&r, 50, 2, 20);
}

#[test]
fn socketio_fanout_main_namespace_and_a_namespace() {
    // Recovery on: every event carries its offset, so seqs are checked too.
    let server = Server::start_with(&[
        "socketio=true",
        "socketio_recovery_secs=120",
        r#"socketio_namespaces=["/","/chat1"]"#,
    ]);
    let url = format!("ws://{}/socket.io/", server.sub);
    // Main namespace: room chN is channel chN.
    let r = fanout(&server, &url, 40, 2, 20, 2);
    assert_eq!(r["transport"], "socketio");
    assert_eq!(r["namespace"], "/");
    assert_clean_fanout(&r, 40, 2, 20);
    // /chat1: room chN is channel chat1.chN.
    let r = json_run(args(&[
        "fanout",
        "--url",
        &format!("http://{}/socket.io", server.sub),
        "--transport",
        "socketio",
        "--namespace",
        "/chat1",
        "--publish",
        &format!("http://{}/pub?channel=chat1.{{c}}", server.admin),
        "--conns",
        "30",
        "--channels",
        "3",
        "--messages",
        "10",
        "--rate",
        "0",
        "--drain",
        "10",
        "--json",
    ]));
    assert_eq!(r["namespace"], "/chat1");
    assert_clean_fanout(&r, 30, 3, 10);
    // A namespace the server does not serve: CONNECT_ERROR.
    let r = json_run(args(&[
        "hold",
        "--url",
        &url,
        "--namespace",
        "/nope",
        "--conns",
        "5",
        "--duration",
        "0",
        "--json",
    ]));
    assert_eq!(r["connect"]["established"], 0, "{r}");
    assert_eq!(r["connect"]["failed_by_reason"]["connect_error"], 5, "{r}");
}

#[test]
fn socketio_pings_are_answered() {
    // A ping every 0.3 s, 0.2 s to answer it: 2 s of holding is about 6 pings each.
    let server = Server::start_with(&[
        "socketio=true",
        "socketio_ping_interval_secs=0.3",
        "socketio_ping_timeout_secs=0.2",
    ]);
    let r = json_run(args(&[
        "hold",
        "--url",
        &format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.sub),
        "--conns",
        "50",
        "--duration",
        "2",
        "--json",
    ]));
    assert_eq!(r["connect"]["established"], 50, "{r}");
    assert_eq!(r["drops"]["dropped"], 0, "{r}");
    assert_eq!(r["drops"]["open_at_end"], 50, "{r}");
}

#[test]
fn http_transports_fanout() {
    let server = Server::start();
    for (path, transport) in [("sse", "sse"), ("stream", "stream"), ("poll", "poll")] {
        // Each run uses fresh channels (seqs start at 1 again).
        let url = format!("http://{}/{path}?channel={path}{{c}}", server.sub);
        let r = json_run(args(&[
            "fanout",
            "--url",
            &url,
            "--publish",
            &format!("http://{}/pub?channel={path}{{c}}", server.admin),
            "--conns",
            "12",
            "--channels",
            "3",
            "--messages",
            "5",
            "--rate",
            "0",
            "--json",
        ]));
        assert_eq!(r["transport"], transport);
        let f = &r["fanout"];
        assert_eq!(r["connect"]["established"], 12, "{r}");
        assert_eq!(f["delivered"], 60, "{path}: {f}");
        for k in [
            "lost",
            "duplicated",
            "out_of_order",
            "seq_errors",
            "foreign",
        ] {
            assert_eq!(f[k], 0, "{path}: {k} in {f}");
        }
    }
}

#[test]
fn pipelined_publishers_deliver_everything() {
    let server = Server::start();
    let url = format!("ws://{}/ws?channel=pipe{{c}}", server.sub);
    let publish = format!("http://{}/pub?channel=pipe{{c}}", server.admin);
    // One connection, 16 in flight: sequenced in send order.
    let (code, out, err) = loadgen(&args(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        &publish,
        "--conns",
        "2",
        "--messages",
        "3000",
        "--rate",
        "0",
        "--pipeline",
        "16",
        "--max-rows",
        "5",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let f = &r["fanout"];
    assert_eq!(f["published"], 3000, "{f}");
    assert_eq!(f["delivered"], 6000, "{f}");
    for k in ["lost", "duplicated", "out_of_order", "seq_errors"] {
        assert_eq!(f[k], 0, "{k} in {f}");
    }
    assert_eq!(f["pipeline"], 16);
    assert_eq!(f["publishers"], 1);
    assert_eq!(f["publishes"].as_array().unwrap().len(), 5);
    assert_eq!(f["publishes_omitted"], 2995);
    assert!(f["publishes_per_s"].as_f64().unwrap() > 0.0, "{f}");
    assert_eq!(f["last_arrival_us"]["count"], 3000, "{f}");
    // --json writes phase lines on stderr.
    for phase in ["settling", "publishing", "draining", "stopping"] {
        assert!(
            err.contains(&format!("loadgen: phase {phase} ")),
            "{phase}: {err}"
        );
    }
    // Four connections with four in flight each: nothing lost (order may differ).
    let r = json_run(args(&[
        "fanout",
        "--url",
        &url.replace("pipe", "par"),
        "--publish",
        &publish.replace("pipe", "par"),
        "--conns",
        "1",
        "--messages",
        "2000",
        "--rate",
        "0",
        "--publishers",
        "4",
        "--pipeline",
        "4",
        "--json",
    ]));
    let f = &r["fanout"];
    assert_eq!(f["published"], 2000, "{f}");
    assert_eq!(f["delivered"], 2000, "{f}");
    assert_eq!(f["lost"], 0, "{f}");
    assert_eq!(f["duplicated"], 0, "{f}");
}

#[test]
fn hold_counts_and_reports_latency() {
    let server = Server::start();
    let r = json_run(args(&[
        "hold",
        "--url",
        &format!("ws://{}/ws?channel={{c}}", server.sub),
        "--conns",
        "200",
        "--channels",
        "4",
        "--rate",
        "2000",
        "--duration",
        "0.5",
        "--sources",
        "127.0.0.2-127.0.0.3",
        "--json",
    ]));
    assert_eq!(r["mode"], "hold");
    assert_eq!(r["sources"], 2);
    assert_eq!(r["connect"]["established"], 200, "{r}");
    assert_eq!(r["connect"]["latency_us"]["count"], 200);
    assert_eq!(r["drops"]["open_at_end"], 200);
    let rate = r["connect"]["rate_per_s"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 4000.0, "rate {rate}");
    assert!(r["hold_s"].as_f64().unwrap() >= 0.5);
}

#[test]
fn refused_connections_are_counted() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let r = json_run(args(&[
        "hold",
        "--url",
        &format!("ws://{addr}/ws"),
        "--conns",
        "20",
        "--duration",
        "0",
        "--json",
    ]));
    assert_eq!(r["connect"]["established"], 0);
    assert_eq!(r["connect"]["failed_by_reason"]["refused"], 20, "{r}");
}

#[test]
fn rejects_non_loopback_targets() {
    let (code, _, err) = loadgen(&args(&[
        "hold",
        "--url",
        "ws://192.0.2.1:80/ws",
        "--conns",
        "1",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("loopback"), "{err}");
    assert!(err.contains("--allow-remote"), "{err}");
}
