//! The disk history store (`history_store = "disk"`): every channel's epoch, seq and
//! history survive a restart of the node.
//!
//! # Why fjall
//!
//! The store is an append-mostly log: each publish adds one small record and drops the one
//! that fell out of `history_size`. fjall (an LSM tree with a write-ahead journal) writes
//! a whole batch of them as one sequential append to its journal, and a batch can ask for
//! exactly the durability we want: written to the OS (`PersistMode::Buffer`: survives a
//! crash or `kill -9` of the process, the default) or `fdatasync`ed (`history_fsync =
//! true`: survives a power loss). Prefix iteration reads a channel's history back at
//! start; deleted records are dropped by its background compaction. redb, the other
//! candidate, is a copy-on-write B-tree: every durable commit rewrites pages and syncs
//! them, and its non-durable commits do not survive a process crash, so it would either
//! cost an fsync per batch or lose acknowledged messages on `kill -9`.
//!
//! # How it is used
//!
//! The hub requests changes under its lock and queues them here as [`Op`]s, each with a
//! ticket (1, 2, 3, ... in queue order). One writer thread takes everything queued,
//! writes it as one batch (so pipelined publishes share one journal write), and only
//! then applies the batch to the hub ([`Hub::apply_committed`]): subscribers receive a
//! message, and its publisher gets its answer ([`Store::committed`] passes its ticket),
//! only once it is on disk. No reactor thread ever touches the disk.
//!
//! If a write fails (disk full, I/O error) it is retried a few times; if it still fails
//! the store turns *failed*: the batch's publishes are answered 503 and every later
//! publish too, until the node is restarted (the reason is logged and shown in `/info`).
//!
//! # Layout
//!
//! Three keyspaces: `meta` (channel -> seq and epoch), `msgs` (channel, NUL, seq as 8
//! big-endian bytes -> content) and `idem` (channel, NUL, key -> expiry, seq, epoch).
//! Channel names have no NUL, so a channel's records are one key prefix.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::config::Live;
use crate::epoch::Epoch;
use crate::hub::{Hub, Op};
use crate::inbox::Wake;
use crate::{error, warn};

/// Attempts at writing one batch before the store is declared failed.
pub const WRITE_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
pub const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most ops written in one batch (a larger queue is written in several).
pub const MAX_BATCH_OPS: usize = 65_536;

/// What the store held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every channel with its stream.
    pub channels: Vec<LoadedChannel>,
    /// Idempotency records (expired ones included; the hub skips them).
    pub idem: Vec<LoadedIdem>,
}

/// One channel read back.
#[derive(Debug)]
pub struct LoadedChannel {
    /// Name.
    pub name: String,
    /// Its stream's epoch.
    pub epoch: Epoch,
    /// Last seq.
    pub seq: u64,
    /// The newest `history_size` messages, oldest first.
    pub history: Vec<(u64, String)>,
}

/// One idempotency record read back.
#[derive(Debug)]
pub struct LoadedIdem {
    /// Channel.
    pub channel: String,
    /// Key.
    pub key: String,
    /// The first publish's epoch.
    pub epoch: Epoch,
    /// Its seq.
    pub seq: u64,
    /// Unix seconds at which it is forgotten.
    pub expires: u64,
}

struct Queue {
    ops: Vec<Op>,
    last_ticket: u64,
    closed: bool,
}

struct Db {
    db: Database,
    meta: Keyspace,
    msgs: Keyspace,
    idem: Keyspace,
}

/// The disk store: a queue of ops and the thread that writes them.
pub struct Store {
    queue: Mutex<Queue>,
    ready: Condvar,
    committed: AtomicU64,
    done: Mutex<()>,
    done_cv: Condvar,
    failed: Mutex<Option<String>>,
    wakers: Mutex<Vec<Arc<dyn Wake>>>,
    live: Arc<Live>,
    durability: PersistMode,
    db: Mutex<Option<Db>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Batches written.
    pub batches: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn msg_key(name: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 9);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix_of(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn idem_key(name: &str, key: &str) -> Vec<u8> {
    let mut k = prefix_of(name);
    k.extend_from_slice(key.as_bytes());
    k
}

fn meta_value(seq: u64, epoch: Epoch) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(epoch.as_str().as_bytes());
    v
}

fn decode_meta(v: &[u8]) -> Option<(u64, Epoch)> {
    let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let epoch = Epoch::parse(std::str::from_utf8(&v[8..]).ok()?)?;
    Some((seq, epoch))
}

fn idem_value(expires: u64, seq: u64, epoch: Epoch) -> Vec<u8> {
    let mut v = expires.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(epoch.as_str().as_bytes());
    v
}

fn decode_idem(v: &[u8]) -> Option<(u64, u64, Epoch)> {
    let expires = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    let epoch = Epoch::parse(std::str::from_utf8(&v[16..]).ok()?)?;
    Some((expires, seq, epoch))
}

/// Which keyspace a change goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    Meta,
    Msgs,
    Idem,
}

/// The final state of every key a batch touches, so that a key written and removed in one
/// batch (a trimmed message, a channel closed and started again) ends as the last op says.
type Changes = BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>;

impl Db {
    fn open(path: &Path) -> Result<Db, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create history_path {}: {e}", path.display()))?;
        let db = Database::builder(path)
            .open()
            .map_err(|e| format!("cannot open the history store at {}: {e}", path.display()))?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| format!("cannot open keyspace {name} of the history store: {e}"))
        };
        Ok(Db {
            meta: open("meta")?,
            msgs: open("msgs")?,
            idem: open("idem")?,
            db,
        })
    }

    fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Meta => &self.meta,
            Space::Msgs => &self.msgs,
            Space::Idem => &self.idem,
        }
    }

    fn load(&self, history_size: usize) -> Result<Loaded, String> {
        let mut out = Loaded::default();
        for g in self.meta.iter() {
            let (k, v) = g.into_inner().map_err(err)?;
            let (Ok(name), Some((seq, epoch))) = (std::str::from_utf8(&k), decode_meta(&v)) else {
                warn!("history store: skipping a malformed channel record");
                continue;
            };
            let mut history = Vec::new();
            for g in self.msgs.prefix(prefix_of(name)).rev().take(history_size) {
                let (k, v) = g.into_inner().map_err(err)?;
                let seq_bytes = k.get(k.len().saturating_sub(8)..).unwrap_or(&[]);
                let (Ok(s), Ok(content)) = (
                    <[u8; 8]>::try_from(seq_bytes),
                    String::from_utf8(v.to_vec()),
                ) else {
                    continue;
                };
                history.push((u64::from_be_bytes(s), content));
            }
            history.reverse();
            // The history is one contiguous run ending at the channel's seq.
            let mut keep = history.len();
            let len = history.len();
            for (i, (s, _)) in history.iter().enumerate().rev() {
                if seq.checked_sub((len - 1 - i) as u64) != Some(*s) {
                    break;
                }
                keep = i;
            }
            history.drain(..keep);
            out.channels.push(LoadedChannel {
                name: name.to_string(),
                epoch,
                seq,
                history,
            });
        }
        for g in self.idem.iter() {
            let (k, v) = g.into_inner().map_err(err)?;
            let Some(nul) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            let (Ok(channel), Ok(key), Some((expires, seq, epoch))) = (
                std::str::from_utf8(&k[..nul]),
                std::str::from_utf8(&k[nul + 1..]),
                decode_idem(&v),
            ) else {
                continue;
            };
            out.idem.push(LoadedIdem {
                channel: channel.into(),
                key: key.into(),
                epoch,
                seq,
                expires,
            });
        }
        Ok(out)
    }

    /// Marks every message of `name` (written or pending in this batch) for removal.
    fn remove_messages(&self, changes: &mut Changes, name: &str) -> Result<(), String> {
        let prefix = prefix_of(name);
        for g in self.msgs.prefix(&prefix) {
            let k = g.key().map_err(err)?;
            changes.insert((Space::Msgs, k.to_vec()), None);
        }
        let start = (Space::Msgs, prefix.clone());
        let pending: Vec<Vec<u8>> = changes
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|((s, k), _)| *s == Space::Msgs && k.starts_with(&prefix))
            .map(|((_, k), _)| k.clone())
            .collect();
        for k in pending {
            changes.insert((Space::Msgs, k), None);
        }
        Ok(())
    }

    fn changes(&self, ops: &[Op], history_size: usize) -> Result<Changes, String> {
        let mut changes = Changes::new();
        for op in ops {
            match op {
                Op::Append { msg, idem, .. } => {
                    let name = &*msg.channel;
                    changes.insert(
                        (Space::Msgs, msg_key(name, msg.seq)),
                        Some(msg.content.as_bytes().to_vec()),
                    );
                    if msg.seq > history_size as u64 {
                        let old = msg_key(name, msg.seq - history_size as u64);
                        changes.insert((Space::Msgs, old), None);
                    }
                    changes.insert(
                        (Space::Meta, name.as_bytes().to_vec()),
                        Some(meta_value(msg.seq, msg.epoch)),
                    );
                    if let Some(r) = idem {
                        changes.insert(
                            (Space::Idem, idem_key(name, &r.key)),
                            Some(idem_value(r.expires, msg.seq, msg.epoch)),
                        );
                    }
                }
                Op::Close { name, .. } | Op::Drop { name } => {
                    self.remove_messages(&mut changes, name)?;
                    changes.insert((Space::Meta, name.as_bytes().to_vec()), None);
                }
                Op::Clear { name, .. } => self.remove_messages(&mut changes, name)?,
                Op::Forget { channel, key } => {
                    changes.insert((Space::Idem, idem_key(channel, key)), None);
                }
                Op::Drain => {}
            }
        }
        Ok(changes)
    }

    fn write(&self, changes: Changes, durability: PersistMode) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(durability));
        for ((space, k), v) in changes {
            match v {
                Some(v) => batch.insert(self.space(space), k, v),
                None => batch.remove(self.space(space), k),
            }
        }
        batch.commit().map_err(err)
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and reads back what it holds.
    pub fn open(path: &str, fsync: bool, live: Arc<Live>) -> Result<(Arc<Store>, Loaded), String> {
        let started = Instant::now();
        let db = Db::open(Path::new(path))?;
        let loaded = db.load(live.history_size())?;
        let msgs: usize = loaded.channels.iter().map(|c| c.history.len()).sum();
        crate::info!(
            "history store {path}: {} channels, {msgs} messages read in {} ms",
            loaded.channels.len(),
            started.elapsed().as_millis()
        );
        let store = Store {
            queue: Mutex::new(Queue {
                ops: Vec::new(),
                last_ticket: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            committed: AtomicU64::new(0),
            done: Mutex::new(()),
            done_cv: Condvar::new(),
            failed: Mutex::new(None),
            wakers: Mutex::new(Vec::new()),
            live,
            durability: if fsync {
                PersistMode::SyncData
            } else {
                PersistMode::Buffer
            },
            db: Mutex::new(Some(db)),
            thread: Mutex::new(None),
            batches: AtomicU64::new(0),
        };
        Ok((Arc::new(store), loaded))
    }

    /// Starts the writer thread.
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) -> Result<(), String> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or("the history store was started twice")?;
        let me = self.clone();
        let h = thread::Builder::new()
            .name("history-store".into())
            .spawn(move || me.run(db, &hub))
            .map_err(|e| format!("cannot start the history store thread: {e}"))?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        Ok(())
    }

    /// Queues an op (called under the hub lock, so ops are queued in seq order); returns
    /// its ticket.
    pub fn enqueue(&self, op: Op) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.last_ticket += 1;
        let was_empty = q.ops.is_empty();
        q.ops.push(op);
        if was_empty {
            self.ready.notify_one();
        }
        q.last_ticket
    }

    /// The highest ticket committed and applied.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Why the store failed, once it has.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Also wakes `w` after every commit (the admin thread holds answers until then).
    pub fn add_waker(&self, w: Arc<dyn Wake>) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w);
    }

    /// The outcome of `ticket`: `None` while it waits, `Some(Ok)` once committed,
    /// `Some(Err)` when the store failed before committing it.
    pub fn outcome(&self, ticket: u64) -> Option<Result<(), String>> {
        if self.committed() >= ticket {
            return Some(Ok(()));
        }
        self.failed().map(Err)
    }

    /// Blocks until `ticket` is committed (or the store failed, or `timeout` passed).
    pub fn wait(&self, ticket: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = self.outcome(ticket) {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the history store did not commit in time".into());
            }
            guard = self
                .done_cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Writes what is queued, stops the thread and syncs the store to disk.
    pub fn close(&self) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.closed = true;
            self.ready.notify_one();
        }
        if let Some(h) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }

    fn take_batch(&self) -> Option<(Vec<Op>, u64)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.ops.is_empty() && !q.closed {
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.ops.is_empty() {
            return None;
        }
        let n = q.ops.len().min(MAX_BATCH_OPS);
        let rest = q.ops.split_off(n);
        let ops = std::mem::replace(&mut q.ops, rest);
        let last = q.last_ticket - q.ops.len() as u64;
        Some((ops, last))
    }

    fn run(&self, db: Db, hub: &Hub) {
        while let Some((ops, last)) = self.take_batch() {
            let result = if self.failed().is_some() {
                Err("the store failed earlier".to_string())
            } else {
                self.write_with_retries(&db, &ops)
            };
            match result {
                Ok(()) => {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    hub.apply_committed(ops);
                }
                Err(e) => {
                    let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                    if failed.is_none() {
                        error!(
                            "history store: write failed: {e}; publishing is refused until restart"
                        );
                        *failed = Some(e.clone());
                    }
                    drop(failed);
                    hub.apply_failed(ops, &e);
                }
            }
            self.committed.store(last, Ordering::Release);
            {
                let _g = self.done.lock().unwrap_or_else(|p| p.into_inner());
                self.done_cv.notify_all();
            }
            for w in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                w.wake();
            }
        }
        if let Err(e) = db.db.persist(PersistMode::SyncAll) {
            error!("history store: final sync failed: {e}");
        }
    }

    fn write_with_retries(&self, db: &Db, ops: &[Op]) -> Result<(), String> {
        let history_size = self.live.history_size();
        let mut last = String::new();
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(WRITE_RETRY_PAUSE);
            }
            match db
                .changes(ops, history_size)
                .and_then(|c| db.write(c, self.durability))
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!("history store: write attempt {} failed: {e}", attempt + 1);
                    last = e;
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::inbox::Inbox;
    use crate::msg::{Msg, MsgKind};

    fn append(name: &str, epoch: Epoch, seq: u64, content: &str) -> Op {
        Op::Append {
            msg: Arc::new(Msg::new(
                1,
                Arc::from(name),
                epoch,
                seq,
                MsgKind::Data,
                content.into(),
            )),
            idem: None,
            notify: None,
        }
    }

    #[test]
    fn changes_keep_the_last_state_of_each_key_and_load_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epoch::parse("e1").unwrap();
        let e2 = Epoch::parse("e2").unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let ops: Vec<Op> = (1..=5)
                .map(|s| append("a", e, s, &format!("m{s}")))
                .chain([
                    append("b", e, 1, "b1"),
                    Op::Close {
                        key: 1,
                        name: Arc::from("b"),
                    },
                    append("b", e2, 1, "again"),
                ])
                .collect();
            let c = db.changes(&ops, 3).unwrap();
            db.write(c, PersistMode::Buffer).unwrap();
            // A second batch: clear a channel, publish after it.
            let ops = vec![
                Op::Clear {
                    key: 1,
                    name: Arc::from("a"),
                },
                append("a", e, 6, "m6"),
            ];
            let c = db.changes(&ops, 3).unwrap();
            db.write(c, PersistMode::Buffer).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let mut l = db.load(3).unwrap();
        l.channels.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(l.channels.len(), 2);
        let a = &l.channels[0];
        assert_eq!((a.epoch, a.seq), (e, 6));
        assert_eq!(a.history, vec![(6, "m6".to_string())]);
        let b = &l.channels[1];
        assert_eq!((b.epoch, b.seq), (e2, 1));
        assert_eq!(b.history, vec![(1, "again".to_string())]);
    }

    #[test]
    fn the_writer_applies_only_after_the_commit_and_answers_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let live = Arc::new(Live::new(&cfg));
        let (store, loaded) =
            Store::open(dir.path().to_str().unwrap(), false, live.clone()).unwrap();
        assert!(loaded.channels.is_empty());
        let inbox = Arc::new(Inbox::detached());
        let hub = Arc::new(Hub::new(
            vec![inbox],
            crate::hub::HubConfig::from_config(&cfg, live.clone(), false),
            Some((store.clone(), loaded)),
        ));
        store.start(hub.clone()).unwrap();
        let a = hub.publish("c", "one", None, None).unwrap();
        assert!(a.ticket > 0);
        store.wait(a.ticket, Duration::from_secs(5)).unwrap();
        assert_eq!(hub.info("c").unwrap().seq, 1);
        let b = hub.publish("c", "two", None, None).unwrap();
        store.wait(b.ticket, Duration::from_secs(5)).unwrap();
        let epoch = hub.info("c").unwrap().epoch;
        store.close();
        drop(hub);
        let (_, loaded) = Store::open(dir.path().to_str().unwrap(), false, live).unwrap();
        let c = &loaded.channels[0];
        assert_eq!((c.name.as_str(), c.epoch, c.seq), ("c", epoch, 2));
        assert_eq!(c.history.len(), 2);
    }
}
