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
//! Three keyspaces: `msgs` (channel, NUL, epoch, seq as 8 big-endian bytes -> content),
//! `meta` (channel -> its stream: epoch, seq and the oldest seq kept) and `idem`
//! (channel, NUL, key -> expiry, seq, epoch). Channel names have no NUL. A publish writes
//! one message record and, once per batch, its channel's stream record; nothing is
//! deleted one by one. Messages that fell out of `history_size`, were cleared or belong
//! to a stream that ended (a close, a reclaim) are dropped by a compaction filter when
//! fjall compacts, and expired idempotency records likewise; reading back at start takes
//! only each stream's `floor..=seq`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch, PersistMode,
};

use crate::config::Live;
use crate::epoch::Epoch;
use crate::hub::{Hub, Op};
use crate::inbox::Wake;
use crate::limits::{STORE_MAX_BATCH_OPS, STORE_RETRY_PAUSE, STORE_WRITE_ATTEMPTS};
use crate::{error, warn};

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
    /// The newest `history_size` messages, oldest first, each packed with its sender
    /// ([`crate::msg::pack`]).
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
    /// The writer thread was asked to commit (see [`Commit`]).
    wake: bool,
    closed: bool,
}

/// Who commits an op that is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The caller calls [`Store::commit_pending`] once it has queued its batch (the admin
    /// thread, after a read's pipelined requests): no hand-off, no wake-up.
    ByCaller,
    /// The writer thread commits (reactor threads, which never touch the disk, and
    /// callers that block until the commit).
    ByWriter,
}

struct Db {
    db: Database,
    meta: Keyspace,
    msgs: Keyspace,
    idem: Keyspace,
    retention: Arc<Retention>,
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
    /// The store itself, behind the commit lock: batches are taken from the queue,
    /// written and applied under it, so they are applied in ticket order whoever commits.
    db: Mutex<Option<Db>>,
    hub: std::sync::OnceLock<std::sync::Weak<Hub>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Batches written.
    pub batches: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Bytes of an epoch in a key (the epoch's inline form, zero-padded).
const EPOCH_KEY_LEN: usize = 16;

fn msg_key(name: &str, epoch: Epoch, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1 + EPOCH_KEY_LEN + 8);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    let mut e = [0u8; EPOCH_KEY_LEN];
    e[..epoch.as_str().len()].copy_from_slice(epoch.as_str().as_bytes());
    k.extend_from_slice(&e);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `(channel, epoch, seq)` of a message key.
fn split_msg_key(k: &[u8]) -> Option<(&str, Epoch, u64)> {
    let tail = 1 + EPOCH_KEY_LEN + 8;
    let cut = k.len().checked_sub(tail)?;
    if k[cut] != 0 {
        return None;
    }
    let name = std::str::from_utf8(&k[..cut]).ok()?;
    let e = &k[cut + 1..cut + 1 + EPOCH_KEY_LEN];
    let len = e.iter().position(|&b| b == 0).unwrap_or(EPOCH_KEY_LEN);
    let epoch = Epoch::parse(std::str::from_utf8(&e[..len]).ok()?)?;
    let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?);
    Some((name, epoch, seq))
}

fn idem_key(name: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1 + key.len());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A channel's stream as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    epoch: Epoch,
    /// Last seq.
    seq: u64,
    /// Oldest seq still kept (raised as the history moves on, and by a clear).
    floor: u64,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.floor.to_be_bytes());
        v.extend_from_slice(self.epoch.as_str().as_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Meta> {
        let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let floor = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
        let epoch = Epoch::parse(std::str::from_utf8(v.get(16..)?).ok()?)?;
        Some(Meta { epoch, seq, floor })
    }

    /// Keeps `history_size` messages up to the seq.
    fn trim(&mut self, history_size: usize) {
        let keep_from = (self.seq + 1).saturating_sub(history_size as u64).max(1);
        self.floor = self.floor.max(keep_from);
    }
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

/// What is kept, shared with the compaction filters: every channel's stream (a message
/// outside its stream's `floor..=seq`, or of another epoch, is garbage). Until the store
/// has read its state back (`ready`), the filters keep everything.
#[derive(Default)]
struct Retention {
    ready: AtomicBool,
    streams: RwLock<HashMap<Box<str>, Meta>>,
}

impl Retention {
    fn keeps(&self, key: &[u8]) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let Some((name, epoch, seq)) = split_msg_key(key) else {
            return true;
        };
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams
            .get(name)
            .is_some_and(|m| m.epoch == epoch && seq >= m.floor && seq <= m.seq)
    }
}

/// Drops messages that fell out of their channel's history (or whose stream ended)
/// when fjall compacts, so a publish writes one record and nothing is deleted one by one.
struct MsgFilter(Arc<Retention>);

impl CompactionFilter for MsgFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        // Message keys are written once (a seq never repeats within an epoch, and the
        // epoch is in the key), so a dropped one leaves no tombstone behind.
        Ok(if self.0.keeps(item.key()) {
            Verdict::Keep
        } else {
            Verdict::Destroy
        })
    }
}

/// Drops idempotency records whose window has passed.
struct IdemFilter;

impl CompactionFilter for IdemFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expired = item
            .value()
            .ok()
            .and_then(|v| decode_idem(&v))
            .is_some_and(|(expires, _, _)| expires <= now);
        Ok(if expired {
            Verdict::Remove
        } else {
            Verdict::Keep
        })
    }
}

struct Filters {
    retention: Arc<Retention>,
}

impl Factory for Filters {
    fn name(&self) -> &str {
        "pushedge-retention"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(MsgFilter(self.retention.clone()))
    }
}

struct IdemFilters;

impl Factory for IdemFilters {
    fn name(&self) -> &str {
        "pushedge-idempotency"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(IdemFilter)
    }
}

impl Db {
    fn open(path: &Path) -> Result<Db, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create history_path {}: {e}", path.display()))?;
        let retention = Arc::new(Retention::default());
        let r = retention.clone();
        type Assigner = Arc<dyn Fn(&str) -> Option<Arc<dyn Factory>> + Send + Sync>;
        let assign: Assigner = Arc::new(move |keyspace: &str| {
            let f: Option<Arc<dyn Factory>> = match keyspace {
                "msgs" => Some(Arc::new(Filters {
                    retention: r.clone(),
                })),
                "idem" => Some(Arc::new(IdemFilters)),
                _ => None,
            };
            f
        });
        let db = Database::builder(path)
            .with_compaction_filter_factories(assign)
            // Bounded so the descriptor budget can count the store's files.
            .max_cached_files(Some(crate::limits::STORE_CACHED_FILES))
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
            retention,
        })
    }

    fn load(&self, history_size: usize) -> Result<Loaded, String> {
        let mut out = Loaded::default();
        let mut streams = HashMap::new();
        for g in self.meta.iter() {
            let (k, v) = g.into_inner().map_err(err)?;
            let (Ok(name), Some(meta)) = (std::str::from_utf8(&k), Meta::decode(&v)) else {
                warn!("history store: skipping a malformed channel record");
                continue;
            };
            let from = meta
                .floor
                .max((meta.seq + 1).saturating_sub(history_size as u64));
            let mut history = Vec::new();
            if from <= meta.seq {
                let range = msg_key(name, meta.epoch, from)..=msg_key(name, meta.epoch, meta.seq);
                for g in self.msgs.range(range) {
                    let (k, v) = g.into_inner().map_err(err)?;
                    let (Some((_, _, seq)), Ok(content)) =
                        (split_msg_key(&k), String::from_utf8(v.to_vec()))
                    else {
                        continue;
                    };
                    history.push((seq, content));
                }
            }
            // The history is one contiguous run ending at the channel's seq.
            let len = history.len();
            let mut keep = len;
            for (i, (s, _)) in history.iter().enumerate().rev() {
                if meta.seq.checked_sub((len - 1 - i) as u64) != Some(*s) {
                    break;
                }
                keep = i;
            }
            history.drain(..keep);
            streams.insert(Box::from(name), meta);
            out.channels.push(LoadedChannel {
                name: name.to_string(),
                epoch: meta.epoch,
                seq: meta.seq,
                history,
            });
        }
        *self
            .retention
            .streams
            .write()
            .unwrap_or_else(|p| p.into_inner()) = streams;
        self.retention.ready.store(true, Ordering::Release);
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

    /// Writes a batch of ops: one record per message, one per channel's stream, and the
    /// idempotency records. What the batch keeps is published to the compaction filters
    /// first, so a compaction running meanwhile never drops a record of it.
    fn write(
        &self,
        ops: &[Op],
        history_size: usize,
        durability: PersistMode,
    ) -> Result<(), String> {
        let mut batch = self.db.batch().durability(Some(durability));
        let mut touched: HashMap<Arc<str>, Option<Meta>> = HashMap::new();
        {
            let streams = self
                .retention
                .streams
                .read()
                .unwrap_or_else(|p| p.into_inner());
            for op in ops {
                self.stage(&mut batch, &mut touched, &streams, op, history_size);
            }
        }
        if batch.is_empty() && touched.is_empty() {
            return Ok(());
        }
        {
            let mut streams = self
                .retention
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (name, m) in &touched {
                match m {
                    Some(m) => {
                        streams.insert(Box::from(&**name), *m);
                        batch.insert(&self.meta, name.as_bytes(), m.encode());
                    }
                    None => {
                        streams.remove(&**name);
                        batch.remove(&self.meta, name.as_bytes());
                    }
                }
            }
        }
        batch.commit().map_err(err)
    }

    /// Puts one op into the batch; `touched` collects each channel's new stream record
    /// (`None`: the stream is gone).
    fn stage(
        &self,
        batch: &mut WriteBatch,
        touched: &mut HashMap<Arc<str>, Option<Meta>>,
        streams: &HashMap<Box<str>, Meta>,
        op: &Op,
        history_size: usize,
    ) {
        let current =
            |touched: &HashMap<Arc<str>, Option<Meta>>, name: &Arc<str>| match touched.get(name) {
                Some(m) => *m,
                None => streams.get(&**name).copied(),
            };
        match op {
            Op::Append { msg, idem, .. } => {
                let mut m = match current(touched, &msg.channel) {
                    Some(m) if m.epoch == msg.epoch => Meta { seq: msg.seq, ..m },
                    _ => Meta {
                        epoch: msg.epoch,
                        seq: msg.seq,
                        floor: 1,
                    },
                };
                m.trim(history_size);
                touched.insert(msg.channel.clone(), Some(m));
                batch.insert(
                    &self.msgs,
                    msg_key(&msg.channel, msg.epoch, msg.seq),
                    crate::msg::pack(&msg.sender, &msg.content).into_bytes(),
                );
                if let Some(r) = idem {
                    batch.insert(
                        &self.idem,
                        idem_key(&msg.channel, &r.key),
                        idem_value(r.expires, msg.seq, msg.epoch),
                    );
                }
            }
            Op::Close { name, .. } | Op::Drop { name } => {
                touched.insert(name.clone(), None);
            }
            Op::Clear { name, .. } => {
                if let Some(mut m) = current(touched, name) {
                    m.floor = m.seq + 1;
                    touched.insert(name.clone(), Some(m));
                }
            }
            Op::Forget { channel, key } => batch.remove(&self.idem, idem_key(channel, key)),
            Op::Drain | Op::Resume { .. } => {}
        }
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
                wake: false,
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
            hub: std::sync::OnceLock::new(),
            thread: Mutex::new(None),
            batches: AtomicU64::new(0),
        };
        Ok((Arc::new(store), loaded))
    }

    /// Starts the writer thread.
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) -> Result<(), String> {
        self.hub
            .set(Arc::downgrade(&hub))
            .map_err(|_| "the history store was started twice")?;
        let me = self.clone();
        let h = thread::Builder::new()
            .name("history-store".into())
            .spawn(move || me.run())
            .map_err(|e| format!("cannot start the history store thread: {e}"))?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        Ok(())
    }

    /// Queues an op (called under the hub lock, so ops are queued in seq order); returns
    /// its ticket.
    pub fn enqueue(&self, op: Op, commit: Commit) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.last_ticket += 1;
        q.ops.push(op);
        if commit == Commit::ByWriter && !q.wake {
            q.wake = true;
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

    /// Takes what is queued (at most [`STORE_MAX_BATCH_OPS`]); `None` when nothing is.
    fn take_batch(&self) -> Option<(Vec<Op>, u64)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.ops.is_empty() {
            return None;
        }
        let n = q.ops.len().min(STORE_MAX_BATCH_OPS);
        let rest = q.ops.split_off(n);
        let ops = std::mem::replace(&mut q.ops, rest);
        let last = q.last_ticket - q.ops.len() as u64;
        Some((ops, last))
    }

    /// True when ops wait to be committed.
    pub fn has_pending(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ops
            .is_empty()
    }

    /// Waits until the writer thread is asked to commit; false once closed and empty.
    fn wait_for_work(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while !q.wake && !q.closed {
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.wake = false;
        !(q.closed && q.ops.is_empty())
    }

    /// Hot handover: commits what is queued (its deliveries pushed to the workers), syncs
    /// and closes the database so that the successor can open it; [`Store::reopen`]
    /// opens it again when the handover is called off. Nothing may be queued meanwhile
    /// (the hub refuses publishes while frozen).
    pub fn suspend(&self) -> Result<(), String> {
        self.commit_pending();
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = db.take() {
            d.db.persist(PersistMode::SyncAll).map_err(err)?;
        }
        Ok(())
    }

    /// Hot handover called off: opens the database at `path` again (see
    /// [`Store::suspend`]).
    pub fn reopen(&self, path: &str) -> Result<(), String> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if db.is_none() {
            *db = Some(Db::open(Path::new(path))?);
        }
        Ok(())
    }

    /// Writes and applies everything queued so far, in ticket order (any thread may call
    /// it; the admin thread does after each read's requests).
    pub fn commit_pending(&self) {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let Some(db) = db.as_mut() else {
            return;
        };
        let Some(hub) = self.hub.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        while let Some((ops, last)) = self.take_batch() {
            self.commit(db, &hub, ops, last);
        }
    }

    fn run(&self) {
        while self.wait_for_work() {
            self.commit_pending();
        }
        self.commit_pending();
        if let Some(db) = self.db.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = db.db.persist(PersistMode::SyncAll) {
                error!("history store: final sync failed: {e}");
            }
        }
    }

    fn commit(&self, db: &Db, hub: &Hub, ops: Vec<Op>, last: u64) {
        let result = if self.failed().is_some() {
            Err("the store failed earlier".to_string())
        } else {
            self.write_with_retries(db, &ops)
        };
        match result {
            Ok(()) => {
                self.batches.fetch_add(1, Ordering::Relaxed);
                hub.apply_committed(ops);
            }
            Err(e) => {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if failed.is_none() {
                    error!("history store: write failed: {e}; publishing is refused until restart");
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

    fn write_with_retries(&self, db: &Db, ops: &[Op]) -> Result<(), String> {
        let history_size = self.live.history_size();
        let mut last = String::new();
        for attempt in 0..STORE_WRITE_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(STORE_RETRY_PAUSE);
            }
            match db.write(ops, history_size, self.durability) {
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
    use crate::hub::PubMeta;
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
    fn batches_keep_the_last_state_of_each_stream_and_load_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epoch::parse("e1").unwrap();
        let e2 = Epoch::parse("e2").unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            db.load(3).unwrap();
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
            db.write(&ops, 3, PersistMode::Buffer).unwrap();
            // A second batch: clear a channel, publish after it.
            let ops = vec![
                Op::Clear {
                    key: 1,
                    name: Arc::from("a"),
                },
                append("a", e, 6, "m6"),
            ];
            db.write(&ops, 3, PersistMode::Buffer).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let mut l = db.load(3).unwrap();
        l.channels.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(l.channels.len(), 2);
        let a = &l.channels[0];
        assert_eq!((a.epoch, a.seq), (e, 6));
        assert_eq!(a.history, vec![(6, crate::msg::pack("", "m6"))]);
        let b = &l.channels[1];
        assert_eq!((b.epoch, b.seq), (e2, 1));
        assert_eq!(b.history, vec![(1, crate::msg::pack("", "again"))]);
    }

    #[test]
    fn compaction_drops_what_no_stream_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epoch::parse("e1").unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.load(3).unwrap();
        let mut ops: Vec<Op> = (1..=10).map(|s| append("a", e, s, "x")).collect();
        ops.push(append("gone", e, 1, "y"));
        ops.push(Op::Drop {
            name: Arc::from("gone"),
        });
        db.write(&ops, 3, PersistMode::Buffer).unwrap();
        assert_eq!(db.msgs.iter().count(), 11, "nothing deleted one by one");
        db.msgs.rotate_memtable_and_wait().unwrap();
        db.msgs.major_compact().unwrap();
        let left: Vec<(String, u64)> = db
            .msgs
            .iter()
            .map(|g| {
                let k = g.key().unwrap();
                let (name, _, seq) = split_msg_key(&k).unwrap();
                (name.to_string(), seq)
            })
            .collect();
        assert_eq!(
            left,
            vec![
                ("a".to_string(), 8),
                ("a".to_string(), 9),
                ("a".to_string(), 10)
            ]
        );
        assert!(
            Retention::default().keeps(b"anything"),
            "keeps all until loaded"
        );
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
        let a = hub.publish("c", "one", &PubMeta::default()).unwrap();
        assert!(a.ticket > 0);
        store.wait(a.ticket, Duration::from_secs(5)).unwrap();
        assert_eq!(hub.info("c").unwrap().seq, 1);
        let b = hub.publish("c", "two", &PubMeta::default()).unwrap();
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
