//! The command line: `--version`, bad flags (exit 2), `--config` with flags over it, and
//! addresses already in use.

use pushedge_tests::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version() {
    let out = run_binary(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pushedge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_and_completions() {
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    for (args, needles) in [
        (
            &["--help"][..],
            &["serve", "ctl", "completions", "--listen"][..],
        ),
        (
            &["serve", "--help"],
            &["--listen", "--admin", "--control", "--set"],
        ),
        (
            &["ctl", "--help"],
            &["--control", "--config", "resume", "drain"],
        ),
        (&["help", "serve"], &["--workers", "--backend"]),
        (&["completions", "bash"], &["_pushedge", "ctl"]),
        (&["completions", "zsh"], &["#compdef pushedge"]),
        (&["version"], &["pushedge "]),
    ] {
        let out = run_binary(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        for n in needles {
            assert!(
                stdout(&out).contains(n),
                "{args:?} lacks {n}: {}",
                stdout(&out)
            );
        }
    }
    let out = run_binary(&["completions", "nosh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bad_flags_keys_and_values_exit_2_with_a_message() {
    for (args, needle) in [
        (&["serve", "--bogus", "1"][..], "unexpected argument"),
        (&["serve", "--set", "nope=1"], "unknown key"),
        (&["serve", "--set", "history_size=0"], "history_size"),
        (&["serve", "--set", "history_size=abc"], "history_size"),
        (&["serve", "--set", "heartbeat_secs=-1"], "heartbeat_secs"),
        (&["serve", "--set", "noequals"], "KEY=VALUE"),
        (&["serve", "--backend", "kqueue"], "backend"),
        (&["serve", "--workers", "many"], "workers"),
        (&["serve", "--listen"], "a value is required"),
        (
            &["serve", "--config", "/nonexistent/pushedge.toml"],
            "cannot read",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["serve", "--listen", "nonsense"], "invalid listen address"),
        (
            &["serve", "--listen", "1.2.3.4:99999"],
            "invalid listen address",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:http",
            ],
            "invalid admin address",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "ctl", "stats"],
            "unexpected argument",
        ),
        (&["ctl"], "COMMAND"),
        (
            &["ctl", "--control", "a", "--config", "b", "stats"],
            "cannot be used with",
        ),
    ] {
        let out = run_binary(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// `--set` flags are applied as a whole: a relation between two keys is checked after
/// all of them, whatever their order.
#[test]
fn set_order_does_not_matter() {
    let s = Server::start(&["--set", "auth=token", "--set", "token_secret=abc"]);
    assert_eq!(s.get("/sse?channel=a").status, 401);
}

#[test]
fn config_file_with_flags_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pushedge.toml");
    std::fs::write(
        &path,
        "history_size = 5\nheartbeat_secs = 7\nclient_publish = [\"chat.*\"]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    // --listen (from the harness) overrides the file; --set overrides both.
    let s = Server::start(&["--config", path, "--set", "heartbeat_secs=8"]);
    let mut ctl = s.ctl();
    assert_eq!(ctl.cmd("config get history_size")["value"], 5);
    assert_eq!(ctl.cmd("config get heartbeat_secs")["value"], 8.0);
    assert_eq!(
        ctl.cmd("config get client_publish")["value"],
        json!(["chat.*"])
    );
    assert_ne!(s.addr.port(), 1);
    std::fs::write(dir.path().join("bad.toml"), "bogus_key = 1\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = run_binary(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn admin_address_in_use_fails_at_startup() {
    let a = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("b.sock");
    let out = run_binary(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &a.admin_addr.to_string(),
        "--control",
        control.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
}

#[test]
fn control_socket_in_use_fails_at_startup() {
    let a = Server::start(&[]);
    let out = run_binary(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--control",
        a.control.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    // The running server still answers on it.
    assert_eq!(a.ctl().cmd("help")["type"], "help");
}

#[test]
fn two_processes_share_the_subscriber_port() {
    let a = Server::start(&[]);
    let b = Server::start(&["--listen", &a.addr.to_string(), "--set", "reuse_port=true"]);
    assert_eq!(a.addr, b.addr);
    assert_eq!(a.get("/ping").status, 200);
}
