//! A command connection to Redis that knows whether a request reached it.
//!
//! A publish must tell its caller one of three things: accepted (the script answered), not
//! accepted (nothing reached Redis: 503, safe to retry), or unknown (the request was
//! written and no answer came: 504, only a retry with an idempotency key is safe). So the
//! request is written and its answer read as two steps ([`Link::call`]):
//!
//! - The link is dropped when the feed reconnects ([`Link::get`] compares the feed's
//!   generation): a Redis that restarted has closed it, and the first publish after the
//!   restart would otherwise find it dead.
//! - A link idle for [`LINK_CHECK_AFTER`] is checked with a `PING` before the request, so
//!   a link that broke while idle (a Redis `timeout`, a proxy) is found broken *before*
//!   sending, and the request goes out once more on a new link.
//! - A failure to write is "not sent" (Redis drops a partial command when the connection
//!   closes); a failure to read the answer is "unknown".
//!
//! Connecting loads every script (`SCRIPT LOAD`), so requests are `EVALSHA`; a
//! `NOSCRIPT` answer (a `SCRIPT FLUSH`) means nothing ran: the scripts are loaded again
//! and the request repeated.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::limits::{
    LINK_CHECK_AFTER, REDIS_CONNECT_TIMEOUT, REDIS_IO_TIMEOUT, REDIS_MAX_BACKOFF, REDIS_MIN_BACKOFF,
};
use crate::timer::Rng;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Nothing reached Redis: the request did not run.
    NotSent(String),
    /// The request was written and no answer came: it may have run.
    Unknown(String),
    /// Redis answered with an error (the script did not run, or failed).
    Server(String),
}

impl CallError {
    /// The text of the error.
    pub fn reason(&self) -> &str {
        match self {
            CallError::NotSent(s) | CallError::Unknown(s) | CallError::Server(s) => s,
        }
    }
}

/// A command connection that reconnects lazily, with backoff after failed connects.
pub struct Link {
    conn: Option<redis::Connection>,
    generation: u64,
    last_used: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
    rng: Rng,
}

impl Default for Link {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Link {
            conn: None,
            generation: 0,
            last_used: Instant::now(),
            retry_at: None,
            backoff: REDIS_MIN_BACKOFF,
            rng: Rng::new(seed),
        }
    }
}

/// A Lua script and its SHA1 (what `EVALSHA` names it by).
pub struct Lua {
    /// The source.
    pub code: &'static str,
    /// Its SHA1, in hex.
    pub hash: String,
}

impl Lua {
    /// A script from its source.
    pub fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_string(),
        }
    }
}

/// What a link needs from the cluster: the client, the scripts to load, and the feed's
/// generation.
pub struct Target<'a> {
    /// The Redis client.
    pub client: &'a redis::Client,
    /// Every script, loaded on connect.
    pub scripts: &'a [Lua],
    /// The feed's current generation (links older than it are dropped).
    pub generation: u64,
}

/// A random duration in [10 ms, cap] ("full jitter").
pub fn full_jitter(cap: Duration, rng: &mut Rng) -> Duration {
    let n = cap.as_nanos() as u64;
    Duration::from_nanos(if n == 0 { 0 } else { rng.next_u64() % n }).max(Duration::from_millis(10))
}

/// Connects with the command timeouts.
pub fn connect(client: &redis::Client) -> Result<redis::Connection, String> {
    let c = client
        .get_connection_with_timeout(REDIS_CONNECT_TIMEOUT)
        .map_err(|e| format!("redis unreachable: {e}"))?;
    c.set_read_timeout(Some(REDIS_IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(REDIS_IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

fn load_scripts(con: &mut redis::Connection, scripts: &[Lua]) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for s in scripts {
        pipe.cmd("SCRIPT").arg("LOAD").arg(s.code);
    }
    pipe.query::<Vec<String>>(con)
        .map(drop)
        .map_err(|e| format!("cannot load scripts: {e}"))
}

/// `EVALSHA` of `script` with `keys` and `args`, packed.
pub fn evalsha(script: &Lua, keys: &[&str], args: &[&[u8]]) -> Vec<u8> {
    let mut c = redis::cmd("EVALSHA");
    c.arg(&script.hash).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    for a in args {
        c.arg(*a);
    }
    c.get_packed_command()
}

impl Link {
    /// The connection, (re)connecting when there is none or when it is older than the
    /// feed's generation.
    pub fn get(&mut self, t: &Target<'_>) -> Result<&mut redis::Connection, String> {
        if self.conn.is_some() && self.generation < t.generation {
            self.conn = None;
        }
        if self.conn.is_none() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    return Err("redis unreachable (reconnecting)".into());
                }
            }
            let made = connect(t.client).and_then(|mut c| {
                load_scripts(&mut c, t.scripts)?;
                Ok(c)
            });
            match made {
                Ok(c) => {
                    self.conn = Some(c);
                    self.generation = t.generation;
                    self.last_used = Instant::now();
                    self.retry_at = None;
                    self.backoff = REDIS_MIN_BACKOFF;
                }
                Err(e) => {
                    let wait = full_jitter(self.backoff, &mut self.rng);
                    self.retry_at = Some(Instant::now() + wait);
                    self.backoff = (self.backoff * 2).min(REDIS_MAX_BACKOFF);
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected just above"))
    }

    /// Drops a connection that failed (the next [`Link::get`] connects again at once).
    pub fn fail(&mut self) {
        self.conn = None;
    }

    /// Sends the packed requests and reads their answers, in order. The whole batch is
    /// sent once more on a new link when the old one proved broken before anything was
    /// written; an answer that does not come makes it and every later one
    /// [`CallError::Unknown`].
    pub fn call_many(
        &mut self,
        t: &Target<'_>,
        packed: &[Vec<u8>],
    ) -> Vec<Result<Value, CallError>> {
        let mut last = String::new();
        for _attempt in 0..2 {
            let idle = self.last_used.elapsed() >= LINK_CHECK_AFTER;
            let con = match self.get(t) {
                Ok(c) => c,
                Err(e) => {
                    return packed
                        .iter()
                        .map(|_| Err(CallError::NotSent(e.clone())))
                        .collect()
                }
            };
            if idle && redis::cmd("PING").query::<String>(con).is_err() {
                last = "the link to redis was broken".into();
                self.fail();
                continue;
            }
            let all: Vec<u8> = packed.concat();
            if let Err(e) = con.send_packed_command(&all) {
                last = format!("cannot send to redis: {e}");
                self.fail();
                continue;
            }
            let mut out = Vec::with_capacity(packed.len());
            let mut broken: Option<String> = None;
            for _ in packed {
                if let Some(why) = &broken {
                    out.push(Err(CallError::Unknown(why.clone())));
                    continue;
                }
                match con.recv_response() {
                    Ok(Value::ServerError(e)) if e.code() == "NOSCRIPT" => {
                        out.push(Err(CallError::NotSent("scripts were flushed".into())));
                    }
                    Ok(Value::ServerError(e)) => {
                        out.push(Err(CallError::Server(format!("redis error: {e}"))))
                    }
                    Ok(v) => out.push(Ok(v)),
                    Err(e) => {
                        let why = format!("no answer from redis: {e}");
                        out.push(Err(CallError::Unknown(why.clone())));
                        broken = Some(why);
                    }
                }
            }
            if broken.is_some() {
                self.fail();
            } else {
                self.last_used = Instant::now();
                if out.iter().any(|r| matches!(r, Err(CallError::NotSent(_)))) {
                    // NOSCRIPT: load the scripts again on the next connect.
                    self.fail();
                }
            }
            return out;
        }
        packed
            .iter()
            .map(|_| Err(CallError::NotSent(last.clone())))
            .collect()
    }

    /// One request (see [`Link::call_many`]); a `NOSCRIPT` is retried once.
    pub fn call(&mut self, t: &Target<'_>, packed: Vec<u8>) -> Result<Value, CallError> {
        let batch = [packed];
        for _ in 0..2 {
            let r = self
                .call_many(t, &batch)
                .pop()
                .expect("one answer per request");
            match r {
                Err(CallError::NotSent(ref why)) if why == "scripts were flushed" => continue,
                other => return other,
            }
        }
        Err(CallError::NotSent("scripts were flushed twice".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_bounded() {
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let d = full_jitter(Duration::from_millis(400), &mut rng);
            assert!(d <= Duration::from_millis(400) && d >= Duration::from_millis(10));
        }
    }

    #[test]
    fn evalsha_packs_keys_and_args() {
        let lua = Lua::new("return 1");
        let packed = evalsha(&lua, &["k1"], &[b"a", b"bc"]);
        let text = String::from_utf8(packed).unwrap();
        assert!(
            text.starts_with("*6\r\n$7\r\nEVALSHA\r\n$40\r\n"),
            "{text:?}"
        );
        assert!(text.contains(&lua.hash));
        assert!(
            text.ends_with("$1\r\n1\r\n$2\r\nk1\r\n$1\r\na\r\n$2\r\nbc\r\n"),
            "{text:?}"
        );
    }
}
