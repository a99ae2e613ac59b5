//! `floor sender`: the bare sender, no pushedge at all.
//!
//! It listens on 127.0.0.1 (an ephemeral port, printed as `listening PORT`), takes its
//! first connection as the control one (which must say `c`), then accepts `--conns` data
//! connections (answering `a` on the control connection after each `ACCEPT_BATCH`) and
//! prints `ready`. Each byte `g` on the control connection starts a round:
//! `--threads` threads (one per core by default), each with its share of the sockets, are
//! released together and write one ready frame to each of their sockets; when all are
//! done the sender answers `k` (or `e` if a write failed). End of the control stream (or
//! of stdin) ends the process.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use crate::{arg_num, Args, Res};

/// The sender answers `a` on the control connection after each batch of this many
/// accepted connections (and after the last): the reader connects a batch, then waits.
pub const ACCEPT_BATCH: usize = 100;

/// A server-to-client WebSocket text frame of `size` bytes (2-byte header, unmasked).
pub fn frame(size: usize) -> Res<Vec<u8>> {
    if !(3..=127).contains(&size) {
        return Err(format!(
            "--frame-size {size}: expected 3..=127 (a 7-bit payload length)"
        ));
    }
    let payload = size - 2;
    let mut f = vec![0x81, payload as u8];
    f.extend((0..payload).map(|i| b'a' + (i % 26) as u8));
    Ok(f)
}

/// `floor sender --conns N --threads T --frame-size B`
pub fn main(args: &Args) -> Res<()> {
    let conns: usize = arg_num(args, "--conns", 15_000)?;
    let threads: usize = arg_num(args, "--threads", 2)?.max(1);
    let frame = Arc::new(frame(arg_num(args, "--frame-size", 60)?)?);

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?
        .port();
    say(&format!("listening {port}"))?;

    let (mut ctl, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let mut hello = [0u8; 1];
    ctl.read_exact(&mut hello)
        .map_err(|e| format!("control hello: {e}"))?;
    if &hello != b"c" {
        return Err(format!(
            "the first connection said {hello:?}, not the control hello"
        ));
    }
    ctl.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut socks: Vec<TcpStream> = Vec::with_capacity(conns);
    let mut unanswered = 0;
    while socks.len() < conns {
        let (s, _) = listener
            .accept()
            .map_err(|e| format!("accept ({}): {e}", socks.len()))?;
        s.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        socks.push(s);
        unanswered += 1;
        if unanswered == ACCEPT_BATCH || socks.len() == conns {
            unanswered = 0;
            ctl.write_all(b"a")
                .map_err(|e| format!("control accept answer: {e}"))?;
        }
    }
    drop(listener);

    // Contiguous shares, as even as they go.
    let start = Arc::new(Barrier::new(threads + 1));
    let end = Arc::new(Barrier::new(threads + 1));
    let quit = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(threads);
    let per = conns.div_ceil(threads);
    let mut rest = socks;
    for t in 0..threads {
        let share: Vec<TcpStream> = rest.drain(..per.min(rest.len())).collect();
        let (start, end, quit, failed, frame) = (
            start.clone(),
            end.clone(),
            quit.clone(),
            failed.clone(),
            frame.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("send-{t}"))
            .spawn(move || loop {
                start.wait();
                if quit.load(Ordering::SeqCst) {
                    return;
                }
                for mut s in &share {
                    if s.write_all(&frame).is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                }
                end.wait();
            })
            .map_err(|e| format!("spawn: {e}"))?;
        workers.push(h);
    }
    say("ready")?;

    // stdin closes when the coordinator goes: watch it too.
    std::thread::spawn(|| {
        for _ in io::stdin().lock().lines() {}
        std::process::exit(0);
    });

    let mut cmd = [0u8; 1];
    loop {
        match ctl.read(&mut cmd) {
            Ok(0) => break,
            Ok(_) if cmd[0] == b'g' => {
                start.wait();
                end.wait();
                let answer: &[u8] = if failed.load(Ordering::SeqCst) {
                    b"e"
                } else {
                    b"k"
                };
                ctl.write_all(answer)
                    .map_err(|e| format!("control answer: {e}"))?;
            }
            Ok(_) => return Err(format!("unknown control byte {:#04x}", cmd[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("control read: {e}")),
        }
    }
    quit.store(true, Ordering::SeqCst);
    start.wait();
    for h in workers {
        let _ = h.join();
    }
    Ok(())
}

fn say(line: &str) -> Res<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}
