//! Leveled logging to stderr, and the access log. The level can be changed while the
//! server runs (`config set log_level debug` on the control socket).
//!
//! Every macro checks the level first (one relaxed atomic load) and formats nothing when
//! the level is off: a `debug!` or [`crate::event!`] on a hot path costs a load and a
//! branch. Lines are text (`TS LEVEL MSG key=value...`) or, with `log_format = "json"`,
//! one JSON object each (`ts`, `level`, `msg`, then the fields).

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::limits::ACCESS_LOG_QUEUE;

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but the server goes on.
    Warn = 1,
    /// Normal operation, worth knowing.
    Info = 2,
    /// Detail for diagnosing.
    Debug = 3,
    /// Everything.
    Trace = 4,
}

impl Level {
    /// Parses `error`, `warn`, `info`, `debug` or `trace`.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            3 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The current level.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

/// True when messages of `level` are printed.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line: UTC time, level, message. Use the `error!`..`debug!` macros (or
/// [`crate::event!`] for a line with fields).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    Line::new(level, args).emit();
}

/// Log lines' format (`log_format`): text (`TS LEVEL MSG key=value...`) or one JSON
/// object per line (`{"ts":..,"level":..,"msg":..,"key":value,...}`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Chooses the format of every line from now on.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// True when lines are JSON objects.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

fn now_utc() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_millis())
}

/// A field's value in a log line: a number is written as it is, anything else as a
/// string (bare in text when it needs no quotes, quoted and escaped otherwise).
pub trait Field {
    /// Appends the value.
    fn put(&self, json: bool, out: &mut String);
    /// True when the field is left out (an absent `Option`).
    fn absent(&self) -> bool {
        false
    }
}

/// Appends `s` as a string value.
pub fn put_str(s: &str, json: bool, out: &mut String) {
    let bare = !json
        && !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if bare {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Field for str {
    fn put(&self, json: bool, out: &mut String) {
        put_str(self, json, out);
    }
}

impl Field for String {
    fn put(&self, json: bool, out: &mut String) {
        put_str(self, json, out);
    }
}

impl Field for Box<str> {
    fn put(&self, json: bool, out: &mut String) {
        put_str(self, json, out);
    }
}

impl<T: Field + ?Sized> Field for &T {
    fn put(&self, json: bool, out: &mut String) {
        (**self).put(json, out);
    }
    fn absent(&self) -> bool {
        (**self).absent()
    }
}

impl<T: Field> Field for Option<T> {
    fn put(&self, json: bool, out: &mut String) {
        if let Some(v) = self {
            v.put(json, out);
        }
    }
    fn absent(&self) -> bool {
        self.as_ref().is_none_or(Field::absent)
    }
}

macro_rules! number_fields {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn put(&self, _json: bool, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
number_fields!(u8, u16, u32, u64, usize, i64, bool);

impl Field for f64 {
    fn put(&self, _json: bool, out: &mut String) {
        if self.is_finite() {
            let _ = write!(out, "{self:.3}");
        } else {
            out.push('0');
        }
    }
}

/// A value shown with its `Display` (an address, an id), as a string.
pub struct Shown<T: fmt::Display>(pub T);

impl<T: fmt::Display> Field for Shown<T> {
    fn put(&self, json: bool, out: &mut String) {
        let mut s = String::new();
        let _ = write!(s, "{}", self.0);
        put_str(&s, json, out);
    }
}

impl Field for std::net::SocketAddr {
    fn put(&self, json: bool, out: &mut String) {
        Shown(self).put(json, out);
    }
}

impl Field for std::net::IpAddr {
    fn put(&self, json: bool, out: &mut String) {
        Shown(self).put(json, out);
    }
}

/// One line being put together: the time, the level and the message first, then the
/// fields; [`Line::emit`] writes it whole (one write call, so lines from different
/// threads stay whole).
pub struct Line {
    json: bool,
    buf: String,
}

impl Line {
    /// A line of `level` saying `msg`.
    pub fn new(level: Level, msg: impl fmt::Display) -> Line {
        let json = json();
        let mut buf = String::with_capacity(160);
        if json {
            buf.push_str("{\"ts\":\"");
            buf.push_str(&now_utc());
            buf.push_str("\",\"level\":\"");
            buf.push_str(level.as_str());
            buf.push_str("\",\"msg\":");
            let mut m = String::new();
            let _ = write!(m, "{msg}");
            put_str(&m, true, &mut buf);
        } else {
            let _ = write!(buf, "{} {:5} {msg}", now_utc(), level.as_str());
        }
        Line { json, buf }
    }

    /// An access-log line: the time, then the fields.
    pub fn access() -> Line {
        let json = json();
        let mut buf = String::with_capacity(160);
        if json {
            buf.push_str("{\"ts\":\"");
            buf.push_str(&now_utc());
            buf.push('"');
        } else {
            buf.push_str(&now_utc());
        }
        Line { json, buf }
    }

    /// Adds `key` (a plain identifier) with its value; an absent one is left out.
    pub fn field<V: Field + ?Sized>(&mut self, key: &str, value: &V) -> &mut Line {
        if value.absent() {
            return self;
        }
        if self.json {
            self.buf.push_str(",\"");
            self.buf.push_str(key);
            self.buf.push_str("\":");
        } else {
            self.buf.push(' ');
            self.buf.push_str(key);
            self.buf.push('=');
        }
        value.put(self.json, &mut self.buf);
        self
    }

    /// The line, finished (with its newline).
    pub fn finish(mut self) -> String {
        if self.json {
            self.buf.push('}');
        }
        self.buf.push('\n');
        self.buf
    }

    /// Writes the line to stderr.
    pub fn emit(self) {
        let line = self.finish();
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The access log (`access_log`): lines go through a bounded queue to a writer thread,
/// so a worker never waits for the disk; when the queue is full a line is dropped and
/// counted (`pushedge_access_log_dropped_total`).
struct Access {
    tx: SyncSender<String>,
    written: AtomicU64,
    dropped: AtomicU64,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

/// Sets the format and opens the access log (`""` off, `"-"` stderr, else a file opened
/// for appending), with its writer thread. Called once at start.
pub fn start(json: bool, access_log: &str) -> Result<(), String> {
    set_json(json);
    if access_log.is_empty() || ACCESS.get().is_some() {
        return Ok(());
    }
    let mut out: Box<dyn Write + Send> = if access_log == "-" {
        Box::new(std::io::stderr())
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(access_log)
            .map_err(|e| format!("cannot open access_log {access_log}: {e}"))?;
        Box::new(std::io::BufWriter::with_capacity(64 * 1024, f))
    };
    let (tx, rx) = sync_channel::<String>(ACCESS_LOG_QUEUE);
    let _ = ACCESS.set(Access {
        tx,
        written: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Everything queued is written, then flushed once the queue is empty.
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        })
        .map_err(|e| format!("cannot start the access log thread: {e}"))?;
    Ok(())
}

/// True when the access log is on.
#[inline]
pub fn access_enabled() -> bool {
    ACCESS.get().is_some()
}

/// Queues an access-log line (dropped and counted when the writer is behind).
pub fn access(line: Line) {
    let Some(a) = ACCESS.get() else {
        return;
    };
    match a.tx.try_send(line.finish()) {
        Ok(()) => a.written.fetch_add(1, Ordering::Relaxed),
        Err(_) => a.dropped.fetch_add(1, Ordering::Relaxed),
    };
}

/// Access-log lines queued and dropped so far.
pub fn access_counts() -> (u64, u64) {
    ACCESS.get().map_or((0, 0), |a| {
        (
            a.written.load(Ordering::Relaxed),
            a.dropped.load(Ordering::Relaxed),
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time.
pub fn format_utc(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Error) {
            $crate::log::write($crate::log::Level::Error, format_args!($($arg)*))
        }
    };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*))
        }
    };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write($crate::log::Level::Info, format_args!($($arg)*))
        }
    };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*))
        }
    };
}

/// Logs one line with fields, when `level` (`Error`, `Warn`, `Info`, `Debug`, `Trace`) is
/// on: `event!(Debug, "closed", conn = id, peer = addr, code = 1000)`. The values are
/// evaluated only then; each is a [`crate::log::Field`] (an absent `Option` is left out).
#[macro_export]
macro_rules! event {
    ($level:ident, $msg:expr $(, $key:ident = $val:expr)* $(,)?) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            #[allow(unused_mut)]
            let mut line = $crate::log::Line::new($crate::log::Level::$level, $msg);
            $( line.field(stringify!($key), &$val); )*
            line.emit();
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_000_000, 999), "2026-11-18T11:06:40.999Z");
    }

    #[test]
    fn levels_parse() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("nope"), None);
        assert!(Level::Error < Level::Info);
    }

    #[test]
    fn fields_in_text_and_json() {
        let mut l = Line {
            json: false,
            buf: "m".into(),
        };
        l.field("conn", "0:1:2")
            .field("code", &1000u16)
            .field("reason", "bye now")
            .field("none", &None::<u16>)
            .field("q", "a\"b");
        assert_eq!(
            l.finish(),
            "m conn=0:1:2 code=1000 reason=\"bye now\" q=\"a\\\"b\"\n"
        );
        let mut l = Line {
            json: true,
            buf: "{\"msg\":\"m\"".into(),
        };
        l.field("conn", "0:1:2")
            .field("code", &1000u16)
            .field("reason", "tab\tline\n\u{1}")
            .field(
                "peer",
                &Some("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()),
            );
        assert_eq!(
            l.finish(),
            "{\"msg\":\"m\",\"conn\":\"0:1:2\",\"code\":1000,\"reason\":\"tab\\tline\\n\\u0001\",\"peer\":\"127.0.0.1:9\"}\n"
        );
    }
}
