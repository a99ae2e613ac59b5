//! Streams and their epochs: a resume from another stream, or from a seq the stream never
//! reached, is answered at once with a `reset` and the current stream from its start,
//! never with silence — after a restart in memory mode, a close, a reclaim, and on every
//! transport for a far-future seq. With the disk store a restarted node keeps every
//! channel's epoch, seq and history (`SIGTERM` and `kill -9`), and idempotency keys.

use pushedge_tests::*;
use serde_json::Value;
use std::sync::atomic::AtomicBool;

fn data(channel: &str, seq: u64, epoch: &str, content: &str) -> Value {
    json!({"type": "data", "channel": channel, "seq": seq, "epoch": epoch, "content": content})
}

fn reset(channel: &str, epoch: &str, seq: u64) -> Value {
    json!({"type": "reset", "channel": channel, "epoch": epoch, "seq": seq})
}

fn stop(s: &mut Server) {
    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(TIMEOUT * 2).is_some(),
        "the server did not exit"
    );
}

/// Opens the same resume on every transport and checks each gets `want` first.
fn every_transport_gets(s: &Server, channel: &str, since: &str, want: &[Value]) {
    let since_q = urlencode(since);
    let mut ws = s.ws(&format!("/ws?channel={channel}&since={since_q}"));
    let mut st = s.stream(&format!("/stream?channel={channel}&since={since_q}"));
    let mut fr = s.iframe(&format!("/iframe?channel={channel}&since={since_q}"));
    let mut sse = s.sse(&format!("/sse?channel={channel}&since={since_q}"));
    let mut op = s.ws("/ws");
    let (seq, epoch) = since.split_once('@').unwrap_or((since, ""));
    let mut sub = json!({"op": "sub", "channel": channel, "since": seq.parse::<u64>().unwrap()});
    if !epoch.is_empty() {
        sub["epoch"] = json!(epoch);
    }
    op.op_ok(&sub);
    for w in want {
        assert_eq!(&ws.recv_json(), w, "ws since={since}");
        assert_eq!(&st.expect(), w, "stream since={since}");
        assert_eq!(&fr.expect().1, w, "iframe since={since}");
        assert_eq!(&sse.expect_event().data, w, "sse since={since}");
        assert_eq!(&op.recv_json(), w, "sub op since={since}");
    }
    let r = s.get(&format!("/poll?channel={channel}&seq={since_q}"));
    assert_eq!(r.json(), Value::from(want.to_vec()), "poll seq={since}");
}

#[test]
fn a_restart_in_memory_mode_resets_old_cursors_and_serves_the_new_stream() {
    let mut s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("r", &format!("old{i}"));
    }
    let old = s.epoch("r");
    stop(&mut s);
    let s = Server::start(&[]);
    s.publish("r", "new1");
    s.publish("r", "new2");
    let new = s.epoch("r");
    assert_ne!(old, new, "a new process starts a new stream");
    let want = [
        reset("r", &new, 2),
        data("r", 1, &new, "new1"),
        data("r", 2, &new, "new2"),
    ];
    // A cursor of the old stream, with its epoch: told at once, then the new stream.
    every_transport_gets(&s, "r", &format!("4@{old}"), &want);
    // A plain seq past the new stream's end cannot be from it either.
    every_transport_gets(&s, "r", "4", &want);
    // SSE resumes with the old stream's Last-Event-ID.
    let mut sse = s.sse_with(
        "/sse?channel=r",
        &[("Last-Event-ID", &format!("r:3@{old}"))],
    );
    let e = sse.expect_event();
    assert_eq!(e.data, want[0]);
    assert_eq!(e.id, Some(format!("r:0@{new}")), "the cursor restarts");
    assert_eq!(sse.expect_event().data, want[1]);
    let e = sse.expect_event();
    assert_eq!(e.data, want[2]);
    assert_eq!(e.id, Some(format!("r:2@{new}")));
    // ... then live.
    s.wait_subscribers("r", 1);
    s.publish("r", "new3");
    assert_eq!(sse.expect_event().data, data("r", 3, &new, "new3"));
    // A cursor of the new stream resumes normally.
    let mut ws = s.ws(&format!("/ws?channel=r&since=3@{new}"));
    assert_eq!(ws.recv_json(), data("r", 3, &new, "new3"));
    ws.expect_quiet();
}

#[test]
fn a_closed_channel_starts_a_new_stream_and_old_cursors_are_told() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        s.publish("c", &format!("m{i}"));
    }
    let old = s.epoch("c");
    assert_eq!(s.admin_post("/close?channel=c", b"").status, 200);
    assert_eq!(s.publish("c", "after"), 1, "the new stream starts at 1");
    let new = s.epoch("c");
    assert_ne!(old, new);
    let want = [reset("c", &new, 1), data("c", 1, &new, "after")];
    // Inside the old stream's seqs, but another epoch.
    every_transport_gets(&s, "c", &format!("2@{old}"), &want);
    every_transport_gets(&s, "c", &format!("4@{old}"), &want);
}

#[test]
fn a_reclaimed_channel_starts_a_new_stream_and_old_cursors_are_told() {
    let s = Server::start(&["--set", "channel_ttl_secs=0.3"]);
    for i in 1..=3 {
        s.publish("n", &format!("m{i}"));
    }
    let old = s.epoch("n");
    // Idle and without subscribers: reclaimed (swept every 250 ms).
    assert!(
        wait_until(TIMEOUT, || s.channel_info("n")["seq"] == 0),
        "never reclaimed: {}",
        s.channel_info("n")
    );
    s.publish("n", "while you were away");
    let new = s.epoch("n");
    assert_ne!(old, new);
    every_transport_gets(
        &s,
        "n",
        &format!("4@{old}"),
        &[
            reset("n", &new, 1),
            data("n", 1, &new, "while you were away"),
        ],
    );
}

#[test]
fn a_far_future_seq_is_answered_on_every_transport() {
    let s = Server::start(&["--set", "history_size=2"]);
    for i in 1..=3 {
        s.publish("f", &format!("m{i}"));
    }
    let e = s.epoch("f");
    // The stream holds 2..=3: a gap for 1 after the reset.
    let want = [
        reset("f", &e, 3),
        json!({"type": "gap", "channel": "f", "from": 1, "to": 1}),
        data("f", 2, &e, "m2"),
        data("f", 3, &e, "m3"),
    ];
    every_transport_gets(&s, "f", "100", &want);
    every_transport_gets(&s, "f", &format!("100@{e}"), &want);
    // The next seq is not the future: live, nothing replayed.
    let mut ws = s.ws(&format!("/ws?channel=f&since=4@{e}"));
    s.wait_subscribers("f", 1);
    ws.expect_quiet();
    // A poll for a far-future seq on a channel with nothing in it yet is answered too.
    let r = s.get("/poll?channel=empty&seq=9");
    let v = r.json();
    assert_eq!(v[0]["type"], "reset", "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // Bad positions are refused.
    for bad in ["x", "1@", "1@UPPER", "-1", "1@a@b"] {
        let bad = urlencode(bad);
        for target in [
            format!("/stream?channel=f&since={bad}"),
            format!("/sse?channel=f&since={bad}"),
            format!("/poll?channel=f&seq={bad}"),
        ] {
            let r = s.get(&target);
            assert_eq!(r.status, 400, "{target}: {}", r.text());
            assert!(r.text().contains("seq@epoch"), "{target}: {}", r.text());
        }
    }
}

fn disk_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--set".into(),
        "history_store=disk".into(),
        "--set".into(),
        format!("history_path={}", dir.display()),
        "--set".into(),
        "history_size=1000".into(),
    ]
}

fn start_disk(dir: &std::path::Path) -> Server {
    let args = disk_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// With the disk store, a node restarted by SIGTERM or killed with SIGKILL comes back with
/// every channel's epoch, seq and history: every publish answered 200 before the stop is
/// replayed to a client that resumes, and the seq goes on.
#[test]
fn the_disk_store_keeps_every_acknowledged_message_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    for (round, kill) in [(1, false), (2, true)] {
        let mut s = start_disk(dir.path());
        let before = s.channel_info("d")["seq"].as_u64().unwrap_or(0);
        let epoch = (before > 0).then(|| s.epoch("d"));
        // A stream of pipelined publishes, stopped by the signal right after.
        let stop_flag = AtomicBool::new(false);
        let answers = publish_pipelined(s.admin_addr, "d", 64, &stop_flag, |i| {
            (i < 400).then(|| format!("round {round} #{i}"))
        });
        assert!(answers.iter().all(|a| a.status == 200), "all accepted");
        let e = s.epoch("d");
        if let Some(prev) = &epoch {
            assert_eq!(&e, prev, "the stream goes on across the restart");
        }
        let seqs: Vec<u64> = answers.iter().map(|a| a.seq.unwrap()).collect();
        assert_eq!(seqs, (before + 1..=before + 400).collect::<Vec<_>>());
        let key = s.admin_post(&format!("/pub?channel=d&key=once-{round}"), b"keyed");
        assert_eq!(key.status, 200);
        let keyed_seq = key.json()["seq"].as_u64().unwrap();
        if kill {
            s.kill9();
        } else {
            stop(&mut s);
        }
        let s = start_disk(dir.path());
        assert_eq!(s.epoch("d"), e, "epoch kept (round {round})");
        let info = s.channel_info("d");
        assert_eq!(info["seq"], keyed_seq, "seq kept: {info}");
        // Everything acknowledged comes back to a client resuming from before it.
        let mut ws = s.ws(&format!("/ws?channel=d&since={}@{e}", before + 1));
        for a in &answers {
            assert_eq!(
                ws.recv_json(),
                data("d", a.seq.unwrap(), &e, &a.content),
                "round {round}"
            );
        }
        assert_eq!(ws.recv_json(), data("d", keyed_seq, &e, "keyed"));
        // The idempotency key is remembered across the restart.
        let again = s.admin_post(&format!("/pub?channel=d&key=once-{round}"), b"keyed");
        assert_eq!(
            again.json(),
            json!({"type": "ok", "channel": "d", "seq": keyed_seq, "epoch": e, "duplicate": true})
        );
        ws.expect_quiet();
        // New publishes continue the seq.
        s.wait_subscribers("d", 1);
        assert_eq!(s.publish("d", "next"), keyed_seq + 1);
        assert_eq!(ws.recv_json(), data("d", keyed_seq + 1, &e, "next"));
        drop(s);
    }
}

/// With the disk store, a close and a clear survive a restart as well, and a channel
/// closed before the restart starts a new stream after it.
#[test]
fn the_disk_store_keeps_closes_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_disk(dir.path());
    s.publish("gone", "x");
    s.publish("cleared", "a");
    s.publish("cleared", "b");
    let cleared = s.epoch("cleared");
    let gone = s.epoch("gone");
    assert_eq!(s.admin_post("/close?channel=gone", b"").status, 200);
    assert_eq!(s.admin_post("/clear?channel=cleared", b"").status, 200);
    stop(&mut s);
    let s = start_disk(dir.path());
    assert_eq!(s.channel_info("gone")["seq"], 0, "closed stays closed");
    let info = s.channel_info("cleared");
    assert_eq!(
        (info["seq"].as_u64(), info["buffered"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(s.epoch("cleared"), cleared);
    let mut ws = s.ws(&format!("/ws?channel=cleared&since=1@{cleared}"));
    assert_eq!(
        ws.recv_json(),
        json!({"type": "gap", "channel": "cleared", "from": 1, "to": 2})
    );
    assert_eq!(s.publish("gone", "new"), 1);
    assert_ne!(s.epoch("gone"), gone);
}

/// The WebSocket `pub` op with the disk store is answered once the message is on disk.
#[test]
fn client_publishes_with_the_disk_store_are_answered_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let args = disk_args(dir.path());
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--set", "client_publish=*"]);
    let mut s = Server::start(&args);
    let mut ws = s.ws("/ws?channel=w");
    s.wait_subscribers("w", 1);
    for i in 1..=20u64 {
        ws.send_json(&json!({"op": "pub", "channel": "w", "content": format!("w{i}")}));
    }
    // The first message starts the stream (an empty one shows no epoch).
    assert!(wait_until(TIMEOUT, || s.channel_info("w")["seq"].as_u64() > Some(0)));
    let e = s.epoch("w");
    let mut oks = 0;
    let mut datas = 0;
    while oks < 20 || datas < 20 {
        let v = ws.recv_json();
        match v["type"].as_str() {
            Some("ok") => {
                oks += 1;
                assert_eq!(
                    v,
                    json!({"type": "ok", "op": "pub", "channel": "w", "seq": oks, "epoch": e})
                );
            }
            Some("data") => {
                datas += 1;
                assert_eq!(v, data("w", datas, &e, &format!("w{datas}")));
            }
            _ => panic!("unexpected {v}"),
        }
    }
    s.kill9();
    let s = start_disk(dir.path());
    assert_eq!(
        s.channel_info("w")["seq"],
        20,
        "every acknowledged pub is on disk"
    );
}
