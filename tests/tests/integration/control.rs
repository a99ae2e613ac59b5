//! The control socket: every command, errors that keep the connection usable, and the
//! `pushedge ctl` client.

use pushedge_tests::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn assert_error(v: &Value, code: u16) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

#[test]
fn socket_is_private() {
    let s = Server::start(&[]);
    let mode = std::fs::metadata(&s.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn help_lists_every_command() {
    let s = Server::start(&[]);
    let v = s.ctl().cmd("help");
    assert_eq!(v["type"], "help");
    let listed: Vec<String> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap().to_string())
        .collect();
    for cmd in [
        "help",
        "stats",
        "info",
        "channels",
        "conns",
        "config get",
        "config set",
        "kick",
        "close",
        "pub",
        "drain",
        "shutdown",
    ] {
        assert!(
            listed.iter().any(|l| l.starts_with(cmd)),
            "{cmd} missing from {listed:?}"
        );
    }
}

#[test]
fn stats_and_info() {
    let s = Server::start(&[]);
    let _ws = s.ws("/ws?channel=a");
    s.wait_subscribers("a", 1);
    s.publish("a", "x");
    let mut ctl = s.ctl();
    let v = ctl.cmd("stats");
    assert_eq!(v["type"], "stats");
    assert_eq!(v["connections"], 1);
    assert_eq!(v["published"], 1);
    assert_eq!(v["channels"], 1);
    let v = ctl.cmd("info");
    assert_eq!(v["type"], "info");
    assert_eq!(v["subscriptions"], 1);
    let v = ctl.cmd("info a");
    assert_eq!(
        v,
        json!({"type": "info", "channel": "a", "epoch": s.epoch("a"), "seq": 1, "subscribers": 1, "buffered": 1})
    );
    assert_error(&ctl.cmd("info bad!name"), 400);
    assert_error(&ctl.cmd("info a b"), 400);
}

#[test]
fn channels_with_prefix() {
    let s = Server::start(&[]);
    for ch in ["x.2", "x.1", "y"] {
        s.publish(ch, "m");
    }
    let mut ctl = s.ctl();
    let v = ctl.cmd("channels x.");
    assert_eq!(v["type"], "channels");
    let names: Vec<&str> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x.1", "x.2"]);
    assert_eq!(ctl.cmd("channels")["channels"].as_array().unwrap().len(), 3);
    assert_error(&ctl.cmd("channels a b"), 400);
}

#[test]
fn conns_lists_connections() {
    let s = Server::start(&[]);
    let _ws = s.ws("/ws?channel=a,b");
    let _sse = s.sse("/sse?channel=c");
    s.wait_subscribers("c", 1);
    let mut ctl = s.ctl();
    let v = ctl.cmd("conns");
    assert_eq!(v["type"], "conns");
    assert_eq!(v["total"], 2);
    let conns = v["conns"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let ws = conns
        .iter()
        .find(|c| c["transport"] == "ws")
        .expect("the ws");
    assert_eq!(ws["channels"], json!(["a", "b"]));
    assert!(ws["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ws["id"].as_str().unwrap().split(':').count(), 3);
    assert!(ws["queued"].is_u64());
    let sse = conns
        .iter()
        .find(|c| c["transport"] == "sse")
        .expect("the sse");
    assert_eq!(sse["channels"], json!(["c"]));
    assert_eq!(ctl.cmd("conns 1")["conns"].as_array().unwrap().len(), 1);
    assert_error(&ctl.cmd("conns 0"), 400);
    assert_error(&ctl.cmd("conns many"), 400);
}

#[test]
fn config_get() {
    let s = Server::start(&["--set", "token_secret=hidden", "--set", "history_size=7"]);
    let mut ctl = s.ctl();
    let v = ctl.cmd("config get");
    assert_eq!(v["type"], "config");
    assert_eq!(v["config"]["history_size"], 7);
    assert_eq!(v["config"]["token_secret"], "<redacted>");
    assert_eq!(v["config"]["admin_token"], "");
    assert_eq!(
        ctl.cmd("config get history_size"),
        json!({"type": "config", "key": "history_size", "value": 7})
    );
    assert_eq!(ctl.cmd("config get token_secret")["value"], "<redacted>");
    assert_eq!(ctl.cmd("config get heartbeat_secs")["value"], 25.0);
    assert_error(&ctl.cmd("config get nope"), 400);
    assert_error(&ctl.cmd("config"), 400);
    assert_error(&ctl.cmd("config frob"), 400);
}

#[test]
fn config_set_changes_live_keys() {
    let s = Server::start(&[]);
    let mut ctl = s.ctl();
    // Heartbeat: a new SSE connection gets `: ping` on the new interval.
    let v = ctl.cmd("config set heartbeat_secs 0.5");
    assert_eq!(
        v,
        json!({"type": "ok", "key": "heartbeat_secs", "value": 0.5})
    );
    assert_eq!(ctl.cmd("config get heartbeat_secs")["value"], 0.5);
    let mut sse = s.sse("/sse?channel=hb");
    let got_ping = (0..5).any(|_| {
        sse.next_block(std::time::Duration::from_secs(2))
            .is_ok_and(|b| b.comments.iter().any(|c| c == "ping"))
    });
    assert!(got_ping, "no `: ping` after heartbeat_secs was lowered");
    // History size.
    assert_eq!(ctl.cmd("config set history_size 2")["value"], 2);
    for i in 0..3 {
        s.publish("h", &i.to_string());
    }
    assert_eq!(s.channel_info("h")["buffered"], 2);
    // Message size.
    assert_eq!(ctl.cmd("config set max_message_bytes 200")["value"], 200);
    let r = s.admin_post("/pub?channel=h", &[b'x'; 300]);
    assert_eq!(r.status, 413);
    // Log level (live) shows in the log.
    assert_eq!(ctl.cmd("config set log_level debug")["value"], "debug");
}

#[test]
fn config_set_refuses_bad_and_non_live_keys() {
    let s = Server::start(&[]);
    let mut ctl = s.ctl();
    assert_error(&ctl.cmd("config set listen 127.0.0.1:1"), 400);
    assert_error(&ctl.cmd("config set workers 8"), 400);
    assert_error(&ctl.cmd("config set auth token"), 400);
    assert_error(&ctl.cmd("config set nope 1"), 400);
    assert_error(&ctl.cmd("config set history_size abc"), 400);
    assert_error(&ctl.cmd("config set history_size 0"), 400);
    assert_error(&ctl.cmd("config set heartbeat_secs -1"), 400);
    assert_error(&ctl.cmd("config set log_level loud"), 400);
    assert_error(&ctl.cmd("config set history_size"), 400);
    // Nothing changed.
    assert_eq!(ctl.cmd("config get history_size")["value"], 64);
    assert_eq!(ctl.cmd("config get listen")["value"], "127.0.0.1:0");
}

#[test]
fn kick_closes_one_connection() {
    let s = Server::start(&[]);
    let mut victim = s.ws("/ws?channel=k");
    let mut other = s.ws("/ws?channel=k");
    s.wait_subscribers("k", 2);
    let mut ctl = s.ctl();
    let conns = ctl.cmd("conns");
    // The victim is the first connection: find it by its local port.
    let port = victim.ws.get_ref().local_addr().unwrap().port();
    let id = conns["conns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"].as_str().unwrap().ends_with(&format!(":{port}")))
        .expect("the victim in conns")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ctl.cmd(&format!("kick {id}")),
        json!({"type": "ok", "kicked": id})
    );
    assert_eq!(victim.recv_close(TIMEOUT), Some(1008));
    drop(victim);
    assert!(wait_until(TIMEOUT, || ctl.cmd("conns")["total"] == 1));
    assert_error(&ctl.cmd(&format!("kick {id}")), 404);
    assert_error(&ctl.cmd("kick 9:9:9"), 400);
    assert_error(&ctl.cmd("kick nonsense"), 400);
    assert_error(&ctl.cmd("kick"), 400);
    s.wait_subscribers("k", 1);
    s.publish("k", "x");
    assert_eq!(other.recv_json()["content"], "x");
    assert_eq!(s.metric("pushedge_kicked_total"), 1.0);
}

#[test]
fn pub_and_close() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=c");
    s.wait_subscribers("c", 1);
    let mut ctl = s.ctl();
    let ok = ctl.cmd("pub c hello  there, world");
    // The first message starts the channel's stream (an empty one shows no epoch).
    let e = s.epoch("c");
    assert_eq!(
        ok,
        json!({"type": "ok", "channel": "c", "seq": 1, "epoch": e})
    );
    assert_eq!(
        ws.recv_json(),
        json!({"type": "data", "channel": "c", "seq": 1, "epoch": e, "content": "hello  there, world"})
    );
    assert_error(&ctl.cmd("pub"), 400);
    assert_error(&ctl.cmd("pub bad/name x"), 400);
    assert_eq!(ctl.cmd("close c"), json!({"type": "ok", "channel": "c"}));
    assert_eq!(ws.recv_json(), json!({"type": "close", "channel": "c"}));
    assert_error(&ctl.cmd("close c"), 404);
    assert_error(&ctl.cmd("close"), 400);
}

#[test]
fn unknown_commands_keep_the_connection_usable() {
    let s = Server::start(&[]);
    let mut ctl = s.ctl();
    assert_error(&ctl.cmd("frobnicate now"), 400);
    assert_error(&ctl.cmd("HELP"), 400);
    // Blank lines get no reply; the next command still works.
    ctl.send_line("");
    ctl.send_line("   ");
    assert_eq!(ctl.cmd("help")["type"], "help");
    assert_error(&ctl.cmd("drain soon"), 400);
    assert_error(&ctl.cmd("shutdown now"), 400);
    assert_eq!(ctl.cmd("stats")["type"], "stats");
    assert_eq!(
        s.info()["draining"],
        false,
        "bad drain arguments drain nothing"
    );
}

#[test]
fn drain_with_a_wait_reports_the_connections_left() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=d");
    s.wait_subscribers("d", 1);
    let reader = std::thread::spawn(move || {
        let code = ws.recv_close(TIMEOUT);
        drop(ws);
        code
    });
    let v = s.ctl().cmd_within("drain 5", TIMEOUT * 2);
    assert_eq!(v["type"], "ok");
    assert_eq!(v["draining"], true);
    assert_eq!(v["connections"], 0);
    assert_eq!(reader.join().unwrap(), Some(1001));
    assert_eq!(s.info()["draining"], true);
}

#[test]
fn shutdown_exits_cleanly() {
    let mut s = Server::start(&[]);
    let v = s.ctl().cmd("shutdown");
    assert_eq!(v, json!({"type": "ok", "shutdown": true}));
    let status = s.wait_exit(TIMEOUT * 2).expect("the server exits");
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(!s.control.exists(), "the control socket is removed on exit");
}

#[test]
fn ctl_binary() {
    let s = Server::start(&[]);
    let out = s.ctl_binary(&["help"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "help");
    let out = s.ctl_binary(&["pub", "c", "from", "ctl"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(s.channel_info("c")["seq"], 1);
    assert_eq!(
        s.get("/poll?channel=c&seq=1").json()[0]["content"],
        "from ctl"
    );
    let out = s.ctl_binary(&["config", "get", "history_size"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["value"], 64);
    let out = s.ctl_binary(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1), "an error reply exits 1");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "error");
    let out = run_binary(&["ctl", "--control", "/nonexistent/pushedge.sock", "stats"]);
    assert_eq!(out.status.code(), Some(2), "no server: exit 2");
    let out = run_binary(&["ctl", "--control", s.control.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "no command: exit 2");
}
