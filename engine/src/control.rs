//! The control socket (operators) and its client, `pushedge ctl`.
//!
//! A Unix stream socket (mode 0600) speaking lines: one command per line, one line of
//! JSON per reply. A bad command or argument gets a JSON error line and the connection
//! stays usable. Each connection is served by its own thread (at most
//! [`MAX_CONTROL_CONNS`]).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::config;
use crate::inbox::Cmd;
use crate::limits::{
    CTL_DEFAULT_CONNS, DRAIN_POLL, MAX_CONNS_LISTING, MAX_CONTROL_CONNS, MAX_DRAIN_WAIT_SECS,
    WORKER_REPLY_TIMEOUT,
};
use crate::shared::{Shared, Stop};
use crate::views::{channel_info_json, channel_json, totals_json};
use crate::{info, warn};

/// The commands, with their help.
pub const COMMANDS: &[(&str, &str)] = &[
    ("help", "this list"),
    ("stats", "server totals"),
    (
        "info [channel]",
        "server totals, or one channel's seq, subscribers and buffered",
    ),
    (
        "channels [prefix]",
        "channels (at most 1000), optionally by name prefix",
    ),
    ("conns [limit]", "open connections (default 100)"),
    ("config get [key]", "the configuration, or one key"),
    ("config set <key> <value>", "change a live key (see README)"),
    ("kick <conn-id>", "close one connection (ids from conns)"),
    (
        "tls reload",
        "read the TLS certificates and keys again (open connections keep theirs)",
    ),
    (
        "close <channel>",
        "close a channel: subscribers get close and are unsubscribed",
    ),
    (
        "pub <channel> <content>",
        "publish (content is the rest of the line)",
    ),
    (
        "drain [seconds]",
        "stop accepting and close subscribers gracefully; waits up to seconds; answers the connections left (again while draining: the progress)",
    ),
    (
        "resume",
        "undo a drain: accept connections and publishes again",
    ),
    ("shutdown", "drain, then exit"),
    (
        "upgrade [--binary PATH]",
        "hot handover: start PATH (default: this executable) with the same arguments and hand it the listeners and every connection; this process then exits",
    ),
];

/// Binds the control socket, replacing a stale socket but refusing to take over one that
/// a running server answers on, or to remove a file that is not a socket.
pub fn bind(path: &str) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    prepare_default_dir(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "control_path {path} exists and is not a socket: refusing to replace it (move it away, or choose another control_path)"
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {path} is in use by a running server"
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale control socket {path}: {e}"))?;
    }
    let l =
        UnixListener::bind(path).map_err(|e| format!("cannot bind control socket {path}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod control socket {path}: {e}"))?;
    Ok(l)
}

/// Binds a control socket beside `path`, which a running server (the old process of a
/// hot handover) still answers on; returns it with its temporary path, which the caller
/// renames onto `path` once it serves (so the path always names a listening socket).
pub fn bind_beside(path: &str) -> Result<(UnixListener, String), String> {
    let tmp = format!("{path}.{}.new", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let l =
        UnixListener::bind(&tmp).map_err(|e| format!("cannot bind control socket {tmp}: {e}"))?;
    if let Err(e) = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot chmod control socket {tmp}: {e}"));
    }
    Ok((l, tmp))
}

/// Creates the directory of a default control path when it is missing (mode 0700):
/// `/run/pushedge` or `/tmp/pushedge-<uid>`; the latter, in a world-writable directory,
/// must then be a real directory of this user that nobody else can enter.
fn prepare_default_dir(path: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = std::path::Path::new(path).parent() else {
        return Ok(());
    };
    let user = std::path::Path::new(&config::default_user_control_path())
        .parent()
        .map(std::path::Path::to_path_buf);
    let is_user = user.as_deref() == Some(dir);
    if !is_user && dir != std::path::Path::new(config::SYSTEM_CONTROL_DIR) {
        return Ok(());
    }
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                format!(
                    "cannot create the control socket directory {}: {e}",
                    dir.display()
                )
            })?;
    }
    if is_user {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(format!(
                "control_path {path}: {} is not a private directory of this user (mode 0700): refusing to use it (remove it, or choose another control_path)",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Accepts control connections (never returns).
pub fn run(shared: Arc<Shared>, listener: UnixListener) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("control: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CONTROL_CONNS {
            let _ = writeln!(stream, "{}", error(503, "too many control connections"));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let active2 = active.clone();
        let spawned = thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                serve_conn(&shared, stream);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_conn(shared: &Shared, stream: UnixStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let max_line = shared.cfg.max_message_bytes * 2 + 1024;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if line.len() > max_line {
            let _ = writeln!(writer, "{}", error(413, "command line too long"));
            return;
        }
        let reply = match std::str::from_utf8(&line) {
            Ok(text) => {
                let text = text.trim_end_matches(['\r', '\n']);
                if text.trim().is_empty() {
                    continue;
                }
                handle(shared, text)
            }
            Err(_) => error(400, "command is not UTF-8"),
        };
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
        if reply.get("type") == Some(&json!("ok")) && reply.get("shutdown") == Some(&json!(true)) {
            shared.request_stop(Stop::Graceful);
        }
        if reply.get("upgraded") == Some(&json!(true)) {
            // The successor serves everything: exit without closing what it holds.
            let _ = writer.flush();
            std::process::exit(0);
        }
    }
}

fn error(code: u16, reason: &str) -> Value {
    json!({"type": "error", "code": code, "reason": reason})
}

/// Splits off the first word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Executes one command line.
pub fn handle(shared: &Shared, line: &str) -> Value {
    let (cmd, rest) = word(line);
    let args: Vec<&str> = rest.split_whitespace().collect();
    match cmd {
        "help" => help(),
        "stats" => {
            let mut v = totals_json(shared);
            v["type"] = json!("stats");
            v
        }
        "info" => info(shared, &args),
        "channels" => channels(shared, &args),
        "conns" => conns_command(shared, &args),
        "config" => config(shared, rest),
        "kick" => match args.as_slice() {
            [id] => kick(shared, id),
            _ => error(400, "usage: kick <conn-id>"),
        },
        "close" => close(shared, &args),
        "pub" => publish(shared, rest),
        "tls" => tls(shared, &args),
        "drain" => drain(shared, &args),
        "resume" => resume(shared, &args),
        "upgrade" => upgrade(shared, &args),
        "shutdown" => shutdown(&args),
        _ => error(
            400,
            &format!(
                "unknown command '{}' (try help)",
                cmd.chars().take(40).collect::<String>()
            ),
        ),
    }
}

/// `help`: the commands.
fn help() -> Value {
    json!({
        "type": "help",
        "commands": COMMANDS.iter().map(|(c, h)| json!({"command": c, "help": h})).collect::<Vec<_>>(),
    })
}

/// `info [channel]`.
fn info(shared: &Shared, args: &[&str]) -> Value {
    match args {
        [] => totals_json(shared),
        [name] => match channel_info_json(shared, name) {
            Ok(v) => v,
            Err(e) => error(e.status(), &e.reason()),
        },
        _ => error(400, "usage: info [channel]"),
    }
}

/// `conns [limit]`.
fn conns_command(shared: &Shared, args: &[&str]) -> Value {
    match args {
        [] => conns(shared, CTL_DEFAULT_CONNS),
        [n] => match n.parse::<usize>() {
            Ok(n) if n > 0 => conns(shared, n.min(MAX_CONNS_LISTING)),
            _ => error(400, "limit must be a positive integer"),
        },
        _ => error(400, "usage: conns [limit]"),
    }
}

/// `close <channel>`.
fn close(shared: &Shared, args: &[&str]) -> Value {
    match args {
        [name] => match shared.close_channel(name) {
            Ok(()) => json!({"type": "ok", "channel": name}),
            Err(e) => error(e.status(), &e.reason()),
        },
        _ => error(400, "usage: close <channel>"),
    }
}

/// `tls reload`.
fn tls(shared: &Shared, args: &[&str]) -> Value {
    match args {
        ["reload"] => match shared.reload_tls() {
            Ok(n) => {
                info!("TLS certificates reloaded ({n}) on the control socket");
                json!({"type": "ok", "reloaded": n})
            }
            Err(e) => {
                warn!("TLS reload failed, the old certificates stay: {e}");
                error(
                    400,
                    &format!("TLS reload failed, the old certificates stay: {e}"),
                )
            }
        },
        _ => error(400, "usage: tls reload"),
    }
}

/// `resume`: accept again after `drain`.
fn resume(shared: &Shared, args: &[&str]) -> Value {
    if !args.is_empty() {
        return error(400, "usage: resume");
    }
    let was = shared.draining.load(Ordering::SeqCst);
    match shared.resume() {
        Ok(workers) => {
            json!({"type": "ok", "draining": false, "resumed": was, "workers": workers})
        }
        Err((code, reason)) => error(code, &reason),
    }
}

/// `upgrade [--binary PATH]`.
fn upgrade(shared: &Shared, args: &[&str]) -> Value {
    let binary = match args {
        [] => None,
        ["--binary", path] | [path] if !path.starts_with('-') => Some(*path),
        _ => return error(400, "usage: upgrade [--binary PATH]"),
    };
    info!("upgrade requested on the control socket");
    match crate::handover::upgrade(shared, binary) {
        Ok(v) => v,
        Err(e) => error(500, &format!("upgrade failed, still serving: {e}")),
    }
}

/// `shutdown` (the caller of [`handle`] stops the server once the answer is written).
fn shutdown(args: &[&str]) -> Value {
    if !args.is_empty() {
        return error(400, "usage: shutdown");
    }
    info!("shutdown requested on the control socket");
    json!({"type": "ok", "shutdown": true})
}

fn channels(shared: &Shared, args: &[&str]) -> Value {
    let prefix = args.first().copied().unwrap_or("");
    if args.len() > 1 {
        return error(400, "usage: channels [prefix]");
    }
    let list: Vec<Value> = shared
        .hub
        .channels(prefix, crate::limits::DEFAULT_LISTING)
        .iter()
        .map(channel_json)
        .collect();
    json!({"type": "channels", "channels": list})
}

fn publish(shared: &Shared, rest: &str) -> Value {
    let (name, content) = word(rest);
    if name.is_empty() {
        return error(400, "usage: pub <channel> <content>");
    }
    match shared.publish_wait(name, content, None) {
        Ok(a) => json!({"type": "ok", "channel": name, "seq": a.seq, "epoch": a.epoch.as_str()}),
        Err(e) => error(e.status(), &e.reason()),
    }
}

fn drain(shared: &Shared, args: &[&str]) -> Value {
    let wait = match args {
        [] => None,
        [s] => match s.parse::<u64>() {
            Ok(n) if n <= MAX_DRAIN_WAIT_SECS => Some(Duration::from_secs(n)),
            _ => {
                return error(
                    400,
                    &format!("seconds must be an integer 0..={MAX_DRAIN_WAIT_SECS}"),
                )
            }
        },
        _ => return error(400, "usage: drain [seconds]"),
    };
    let already = shared.draining.load(Ordering::SeqCst);
    shared.drain();
    if let Some(wait) = wait {
        let deadline = Instant::now() + wait;
        while shared.conns.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            thread::sleep(DRAIN_POLL);
        }
    }
    let mut v = json!({"type": "ok", "draining": true, "already": already});
    if let Some(p) = drain_progress(shared) {
        for (k, x) in p.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
    }
    v
}

/// How far the drain in progress is: connections left, open when it started, seconds
/// since; `None` when not draining.
pub fn drain_progress(shared: &Shared) -> Option<Value> {
    let st = (*shared.drain_state.lock().unwrap_or_else(|p| p.into_inner()))?;
    let left = shared.conns.load(Ordering::Relaxed);
    Some(json!({
        "connections": left,
        "connections_at_start": st.conns_at_start,
        "closed": st.conns_at_start.saturating_sub(left),
        "secs": st.since.elapsed().as_secs_f64(),
        "exiting": st.exiting,
    }))
}

fn config(shared: &Shared, rest: &str) -> Value {
    let (sub, rest) = word(rest);
    match sub {
        "get" => {
            let key = rest.trim();
            let cur = shared.current.lock().unwrap_or_else(|p| p.into_inner());
            match cur.get_json((!key.is_empty()).then_some(key)) {
                Ok(v) if key.is_empty() => json!({"type": "config", "config": v}),
                Ok(v) => json!({"type": "config", "key": key, "value": v}),
                Err(e) => error(400, &e.0),
            }
        }
        "set" => {
            let (key, value) = word(rest);
            if key.is_empty() || value.is_empty() {
                return error(400, "usage: config set <key> <value>");
            }
            match shared.set_config(key, value.trim()) {
                Ok(v) => {
                    info!("config set {key} = {v}");
                    json!({"type": "ok", "key": key, "value": v})
                }
                Err(e) => error(400, &e),
            }
        }
        _ => error(400, "usage: config get [key] | config set <key> <value>"),
    }
}

fn conns(shared: &Shared, limit: usize) -> Value {
    let all = shared.list_conns(limit, None);
    json!({"type": "conns", "total": shared.conns.load(Ordering::Relaxed), "conns": all})
}

fn kick(shared: &Shared, id: &str) -> Value {
    let parts: Vec<&str> = id.split(':').collect();
    let parsed = match parts.as_slice() {
        [w, s, g] => match (w.parse::<usize>(), s.parse::<u32>(), g.parse::<u32>()) {
            (Ok(w), Ok(s), Ok(g)) if w < shared.inboxes.len() => Some((w, s, g)),
            _ => None,
        },
        _ => None,
    };
    let Some((w, slot, generation)) = parsed else {
        return error(400, "conn-id is worker:slot:generation, as listed by conns");
    };
    let (tx, rx) = mpsc::channel();
    shared.inboxes[w].push(Cmd::Kick {
        token: crate::reactor::Token::new(slot as usize, generation),
        reply: tx,
    });
    match rx.recv_timeout(WORKER_REPLY_TIMEOUT) {
        Ok(true) => json!({"type": "ok", "kicked": id}),
        Ok(false) => error(404, "no such connection"),
        Err(_) => error(503, "worker did not answer"),
    }
}

/// `pushedge ctl`: sends one command and prints the reply. Returns the exit status:
/// 0 for a reply that is not an error, 1 for an error reply, 2 when the server cannot be
/// reached.
pub fn client(path: &str, command: &str) -> i32 {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pushedge ctl: cannot connect to {path}: {e}");
            return 2;
        }
    };
    let wait = match word(command) {
        ("drain", secs) => secs.trim().parse::<u64>().unwrap_or(0) + 10,
        ("upgrade", _) => 3 * crate::limits::HANDOVER_TIMEOUT.as_secs() + 5,
        _ => 10,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(wait)));
    if let Err(e) = writeln!(stream, "{command}") {
        eprintln!("pushedge ctl: cannot send: {e}");
        return 2;
    }
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) | Err(_) => {
            eprintln!("pushedge ctl: no reply from {path}");
            2
        }
        Ok(_) => {
            print!("{reply}");
            match serde_json::from_str::<Value>(&reply) {
                Ok(v) if v.get("type") == Some(&json!("error")) => 1,
                _ => 0,
            }
        }
    }
}
