//! Operations (issue 16): `drain` undone by `resume` and drain progress, the refusal to
//! share a port by accident, and the control socket's default path.

use pushedge_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The plain harness arguments, for one-shot runs that must fail at start.
fn serve_args<'a>(listen: &'a str, control: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        "--listen",
        listen,
        "--admin",
        "127.0.0.1:0",
        "--control",
        control,
        "--workers",
        "2",
    ]
}

fn backend_args() -> Vec<String> {
    match std::env::var("PUSHEDGE_BACKEND") {
        Ok(b) if !b.is_empty() => vec!["--backend".into(), b],
        _ => Vec::new(),
    }
}

#[test]
fn drain_then_resume_accepts_and_publishes_again() {
    let s = Server::start(&[]);
    let mut ws = s.ws("/ws?channel=r");
    s.wait_subscribers("r", 1);
    let mut ctl = s.ctl();
    let v = ctl.cmd("drain");
    assert_eq!(v["type"], "ok", "{v}");
    assert_eq!(v["draining"], true);
    assert_eq!(v["already"], false);
    assert_eq!(v["connections_at_start"], 1, "{v}");
    assert_eq!(ws.recv_close(TIMEOUT), Some(1001));
    drop(ws);
    // Progress: a second drain answers it; stats and info show it.
    assert!(wait_until(TIMEOUT, || ctl.cmd("drain")["connections"] == 0));
    let again = ctl.cmd("drain");
    assert_eq!(again["already"], true, "{again}");
    assert_eq!(again["closed"], 1, "{again}");
    let stats = ctl.cmd("stats");
    assert_eq!(stats["draining"], true);
    assert_eq!(stats["drain"]["connections"], 0, "{stats}");
    assert_eq!(stats["drain"]["connections_at_start"], 1, "{stats}");
    assert_eq!(s.info()["draining"], true);
    // Draining: publishes are refused, nobody new gets in.
    let r = s.admin_post("/pub?channel=r", b"refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        Ws::try_connect(s.addr, "/ws?channel=r").is_err(),
        "a WebSocket got in while draining"
    );

    let v = ctl.cmd("resume");
    assert_eq!(
        v,
        json!({"type": "ok", "draining": false, "resumed": true, "workers": s.workers})
    );
    assert_eq!(ctl.cmd("stats")["draining"], false);
    assert_eq!(ctl.cmd("stats")["drain"], Value::Null);
    assert_eq!(s.info()["draining"], false);
    // Every worker listens again: several connections, spread by the kernel.
    let mut clients: Vec<Ws> = (0..8).map(|_| s.ws("/ws?channel=r")).collect();
    s.wait_subscribers("r", 8);
    let seq = s.publish("r", "after resume");
    for c in &mut clients {
        let m = c.recv_json();
        assert_eq!(m["content"], "after resume", "{m}");
        assert_eq!(m["seq"], seq);
    }
    // A second resume is harmless; a drain works again after it.
    assert_eq!(ctl.cmd("resume")["resumed"], false);
    assert_error(&ctl.cmd("resume now"), 400);
    let v = ctl.cmd_within("drain 5", TIMEOUT * 2);
    assert_eq!(v["connections"], 0, "{v}");
    assert_eq!(v["connections_at_start"], 8, "{v}");
}

/// Drain, resume, then one subscriber gets one publish (the resume goes through the
/// disk store's queue and through a cluster's Redis feed as the drain did).
fn drain_resume_deliver(s: &Server) {
    let mut ctl = s.ctl();
    assert_eq!(ctl.cmd("drain")["type"], "ok");
    assert_eq!(s.admin_post("/pub?channel=q", b"x").status, 503);
    let v = ctl.cmd("resume");
    assert_eq!(v["resumed"], true, "{v}");
    let mut ws = s.ws("/ws?channel=q");
    s.wait_subscribers("q", 1);
    s.publish("q", "back");
    assert_eq!(ws.recv_json()["content"], "back");
}

#[test]
fn resume_with_the_disk_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("history_path={}", dir.path().display());
    let s = Server::start(&["--set", "history_store=disk", "--set", &path]);
    drain_resume_deliver(&s);
}

#[test]
fn resume_in_a_cluster() {
    let redis = Redis::start();
    let s = node(&redis.url(), "resume-a", &[]);
    drain_resume_deliver(&s);
}

#[test]
fn resume_through_the_ctl_binary() {
    let s = Server::start(&[]);
    let out = s.ctl_binary(&["drain"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = s.ctl_binary(&["resume"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["draining"], false);
    let mut ws = s.ws("/ws?channel=b");
    s.wait_subscribers("b", 1);
    s.publish("b", "x");
    assert_eq!(ws.recv_json()["content"], "x");
}

#[test]
fn help_lists_resume() {
    let s = Server::start(&[]);
    let v = s.ctl().cmd("help");
    let cmds = v["commands"].as_array().unwrap();
    assert!(cmds.iter().any(|c| c["command"] == "resume"), "{v}");
}

fn assert_error(v: &Value, code: u16) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
}

// ------------------------------------------------------------------ port sharing

#[test]
fn a_second_plain_server_on_a_held_port_is_refused() {
    let a = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("b.sock");
    let listen = a.addr.to_string();
    let mut args = serve_args(&listen, control.to_str().unwrap());
    let backend = backend_args();
    args.extend(backend.iter().map(String::as_str));
    let out = run_binary(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("already in use by another process"), "{err}");
    assert!(err.contains("reuse_port = true"), "{err}");
    // The first one still serves, alone.
    assert_eq!(a.get("/ping").status, 200);
    // Meant: it starts and serves on the same port.
    let b = Server::start(&["--listen", &listen, "--set", "reuse_port=true"]);
    assert_eq!(b.addr, a.addr);
    assert_eq!(b.info()["connections"], 0);
}

#[test]
fn a_port_held_by_another_program_fails_with_status_1_even_when_sharing() {
    // A listener without SO_REUSEPORT: nobody can join it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    for extra in [&[][..], &["--set", "reuse_port=true"][..]] {
        let mut args = serve_args(&listen, control.to_str().unwrap());
        args.extend_from_slice(extra);
        let out = run_binary(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("cannot listen on {listen}")),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn malformed_addresses_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("d.sock");
    let control = control.to_str().unwrap();
    for listen in ["nonsense", "1.2.3.4:99999", "127.0.0.1:-1", ""] {
        let out = run_binary(&serve_args(listen, control));
        assert_eq!(out.status.code(), Some(2), "{listen:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("listen"),
            "{listen:?}: {}",
            stderr(&out)
        );
    }
    let mut args = serve_args("127.0.0.1:0", control);
    args[4] = "localhost:70000";
    let out = run_binary(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
    assert!(!Path::new(control).exists(), "nothing was left behind");
}

// ------------------------------------------------------------------ control socket default

/// A server started with no `--control`, with `env` set; returns it with its ready line.
fn spawn_with_env(env: &[(&str, &Path)]) -> (Child, String) {
    let mut cmd = Command::new(binary());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    cmd.args(backend_args());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn pushedge");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains(" ready: ") {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(START_TIMEOUT);
    match ready {
        Ok(line) => (child, line),
        Err(e) => {
            let _ = child.kill();
            panic!("no ready line: {e}");
        }
    }
}

#[test]
fn the_default_control_socket_is_found_from_any_directory() {
    let runtime = tempfile::tempdir().unwrap();
    let (mut child, ready) = spawn_with_env(&[("XDG_RUNTIME_DIR", runtime.path())]);
    let expected = runtime.path().join("pushedge.sock");
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("control="), expected.to_str().unwrap(), "{ready}");
    let addr: SocketAddr = field("subscriber=").parse().unwrap();
    assert!(TcpStream::connect(addr).is_ok());
    // `pushedge ctl` with no --control, from another directory, finds it.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["ctl", "stats"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "stats");
    let out = Command::new(binary())
        .args(["ctl", "shutdown"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let exited = wait_until(TIMEOUT * 2, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(exited, "shutdown through the default socket");
    assert!(!expected.exists(), "the socket is removed on exit");
}

#[test]
fn ctl_without_a_server_says_where_it_looked() {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["ctl", "stats"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no server"), "{err}");
    assert!(
        err.contains(runtime.path().join("pushedge.sock").to_str().unwrap()),
        "{err}"
    );
}
