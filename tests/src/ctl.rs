//! The control socket client: [`Ctl`].

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{ReadError, TIMEOUT};

/// A control socket client: one command line in, one JSON line out.
pub struct Ctl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Ctl {
    /// Connects (panics on failure).
    pub fn connect(path: &Path) -> Ctl {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Ctl {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one command and reads its reply (within `TIMEOUT`).
    pub fn cmd(&mut self, line: &str) -> Value {
        self.cmd_within(line, TIMEOUT)
    }

    /// Sends one command and reads its reply within `timeout`.
    pub fn cmd_within(&mut self, line: &str, timeout: Duration) -> Value {
        self.send_line(line);
        self.read_reply(timeout)
            .unwrap_or_else(|e| panic!("control `{line}`: {e:?}"))
    }

    /// Sends one line.
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.writer, "{line}").unwrap_or_else(|e| panic!("control send: {e}"));
    }

    /// Reads one reply line as JSON.
    pub fn read_reply(&mut self, timeout: Duration) -> Result<Value, ReadError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| ReadError::Malformed(format!("{e}: {line:?}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(_) => Err(ReadError::Closed),
        }
    }
}

/// A successor started by `ctl upgrade` (the harness did not spawn it): killed when
/// dropped.
pub struct Successor(pub i32);

impl Successor {
    /// Waits for the first successor's "handover: pid N took over" line (successors log
    /// to the first process's stderr) and reads its pid.
    pub fn of(s: &crate::Server) -> Successor {
        Successor::nth(s, 1)
    }

    /// The same for the `nth` (from 1) successor.
    pub fn nth(s: &crate::Server, nth: usize) -> Successor {
        let pids = || -> Vec<i32> {
            s.log()
                .lines()
                .filter_map(|l| l.split("handover: pid ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect()
        };
        assert!(
            crate::wait_until(Duration::from_secs(15), || pids().len() >= nth),
            "no successor number {nth} took over:\n{}",
            s.log()
        );
        Successor(pids()[nth - 1])
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) with plain integers; the pid was read from the successor's own
        // log line while it runs.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}
