//! The log on disk and its writer: records, the tree's stored hashes and the latest signed
//! checkpoint live in one redb file (`audit.redb`), written by one thread that commits
//! every record queued since its last commit in one durable transaction (group commit).
//!
//! Order: an index is handed out under the sequencer lock; the record for it is made
//! (for an issuance: the SVID signed with the index in its claims) outside the lock, so
//! callers sign in parallel; the writer commits only the gapless run of made records
//! below the first index still being made, so records are written in index order.
//! A record that cannot be made leaves its index to a void record (`audit.void`): a log
//! has no gaps. Issuers check what a caller sent (a CSR's signature) before asking for
//! an index, so a void marks a fault of writ's, not a bad request.
//!
//! Fail-closed: a caller learns its record is durable only after the transaction holding
//! it committed; if the commit fails, every queued record and every one still being made
//! fails with it, the next index goes back to the durable size (a new epoch: records
//! made for the old numbering are refused), and nothing that depended on those records
//! is released (an SVID whose issuance record was not written is never handed out).
//!
//! A log several servers share lives in their shared store instead ([`AuditLog::open_shared`],
//! [`super::shared`]): indexes come from reservations, commits insert the records, and the
//! tree is extended over the gapless prefix by whichever server holds the log's head lock.

use super::note::LogKey;
use super::shared::{self, SharedHashes, SharedLog};
use super::{AuditError, Record, record::MAX_RECORD_LEN};
use crate::health::OpenedFile;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tlog_tiles::{Hash, HashReader};
use tokio::sync::{oneshot, watch};

/// Record index → the record's bytes.
pub(super) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_records");
/// Stored-hash index (tlog's dense numbering of the tree's complete subtrees) → hash.
pub(super) const HASHES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_hashes");
/// `checkpoint` → the latest signed checkpoint.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");

/// How a waiting caller hears that its record is durable (or not).
enum Done {
    Sync(std::sync::mpsc::SyncSender<Result<(), AuditError>>),
    Async(oneshot::Sender<Result<(), AuditError>>),
    /// A void record: nobody waits on it.
    Nobody,
}

impl Done {
    fn send(self, result: Result<(), AuditError>) {
        // A caller that stopped waiting has nothing left to release.
        match self {
            Done::Sync(tx) => {
                let _ = tx.send(result);
            }
            Done::Async(tx) => {
                let _ = tx.send(result);
            }
            Done::Nobody => {}
        }
    }
}

struct Queued {
    index: u64,
    bytes: Vec<u8>,
    done: Done,
}

struct Sequencer {
    next: u64,
    /// The end of the indexes this server may number from: unbounded for a log of its
    /// own; the end of its reservation in a shared one.
    end: u64,
    /// How many records the last commit took: the next reservation's size.
    last_batch: u64,
    /// Records made, by index, waiting for the writer.
    queue: BTreeMap<u64, Queued>,
    /// Indexes handed out whose records are still being made.
    building: BTreeSet<u64>,
    /// Bumped when a failed commit renumbers: a record made for an index handed out in
    /// an older epoch is refused, never queued.
    epoch: u64,
    stopping: bool,
}

impl Sequencer {
    /// Takes the records the writer may commit now: the run below the first index still
    /// being made. Everything below it that is not yet durable is queued, so the run has
    /// no gap.
    fn take_ready(&mut self) -> Vec<Queued> {
        let rest = match self.building.first() {
            Some(&first) => self.queue.split_off(&first),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut self.queue, rest)
            .into_values()
            .collect()
    }

    /// Whether the writer has records to commit now.
    fn ready(&self) -> bool {
        match (self.queue.first_key_value(), self.building.first()) {
            (Some((queued, _)), Some(building)) => queued < building,
            (queued, _) => queued.is_some(),
        }
    }

    /// Whether the writer has nothing left, now or to come.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.building.is_empty()
    }
}

/// Where the records live.
enum Place {
    /// A log this server owns, in its data directory.
    Local(Database),
    /// A log several servers share, in their shared store.
    Shared {
        log: Arc<dyn SharedLog>,
        /// This server's name, on its reservations.
        owner: String,
        /// When this server last closed reservations others abandoned.
        swept: Mutex<std::time::Instant>,
        /// Whether the last extension failed (said once, not every tick).
        failing: AtomicBool,
    },
}

/// The reason on a void record filling the index of a record that could not be made.
const VOID_UNMADE: &str = "the record for this index could not be made";

/// How often a server on a shared log looks for others' records to take into the tree
/// (and for its own unfilled reservation) when it has nothing to commit.
const SHARED_TICK: std::time::Duration = std::time::Duration::from_millis(250);

struct Inner {
    place: Place,
    key: Arc<LogKey>,
    origin: String,
    seq: Mutex<Sequencer>,
    work: Condvar,
    durable: watch::Sender<u64>,
    fail_commits: AtomicBool,
    commits: AtomicU64,
    /// Why the last commit failed; `None` once one succeeds (a readiness check, and
    /// what wakes it).
    failure: watch::Sender<Option<String>>,
    /// A log of its own: its file, as opened.
    file: std::sync::OnceLock<OpenedFile>,
    /// Records made durable.
    appended: AtomicU64,
    /// Records refused because their commit failed.
    failed: AtomicU64,
}

/// The log's counters since this process opened it (for metrics, docs/metrics.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records made durable.
    pub appended: u64,
    /// Append transactions committed (each one fsync and one signed checkpoint).
    pub commits: u64,
    /// Records refused because their commit failed (nothing they stood for happened).
    pub failed: u64,
}

/// A submitted record and what waits on it.
#[must_use = "nothing is released until the record is durable: call wait"]
pub struct Pending<T> {
    index: u64,
    value: T,
    rx: std::sync::mpsc::Receiver<Result<(), AuditError>>,
}

impl<T> Pending<T> {
    /// Waits until the record is durable; then returns its index and the value.
    pub fn wait(self) -> Result<(u64, T), AuditError> {
        self.rx
            .recv()
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))??;
        Ok((self.index, self.value))
    }
}

/// The audit log: appends from any thread or task, reads, checkpoints.
pub struct AuditLog {
    inner: Arc<Inner>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A shared log's extender thread (it ends after the writer).
    extender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.inner.origin)
            .field("size", &self.size())
            .finish()
    }
}

pub(super) fn db_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Store(e.to_string())
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, signing with the key in `key_dir` under the
    /// name `origin`, and starts its writer thread.
    pub fn open(path: &Path, key_dir: &Path, origin: &str) -> Result<Self, AuditError> {
        let key = LogKey::open_or_create(key_dir, origin)?;
        let db = Database::create(path).map_err(db_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let size = {
            let tx = db.begin_write().map_err(db_err)?;
            let size;
            {
                let records = tx.open_table(RECORDS).map_err(db_err)?;
                let hashes = tx.open_table(HASHES).map_err(db_err)?;
                let mut meta = tx.open_table(META).map_err(db_err)?;
                size = records.len().map_err(db_err)?;
                if meta.get("checkpoint").map_err(db_err)?.is_none() {
                    let root = tlog_tiles::tree_hash(size, &TableHashes(&hashes))?;
                    meta.insert("checkpoint", key.checkpoint(origin, size, root)?.as_slice())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            size
        };
        let file = OpenedFile::at(path)?;
        let log = Self::start(Place::Local(db), Arc::new(key), origin, size, u64::MAX)?;
        log.inner
            .file
            .set(file)
            .map_err(|_| AuditError::Invalid("the log's file was set twice".into()))?;
        Ok(log)
    }

    /// Opens the log several servers share in `log` (docs/ha.md, "The audit log"), as the
    /// server `owner`, signing checkpoints with its own key in `key_dir` (published beside
    /// the log, so verifiers find every server's).
    pub fn open_shared(
        log: Arc<dyn SharedLog>,
        owner: &str,
        key_dir: &Path,
        origin: &str,
    ) -> Result<Self, AuditError> {
        let key = Arc::new(LogKey::open_or_create(key_dir, origin)?);
        log.publish_key(owner, key.vkey())?;
        let place = Place::Shared {
            log,
            owner: owner.to_owned(),
            swept: Mutex::new(std::time::Instant::now()),
            failing: AtomicBool::new(false),
        };
        let opened = Self::start(place, key, origin, 0, 0)?;
        // The tree as it stands (and its first checkpoint, for a new log: a server
        // starting beside another may find it making that one).
        for _ in 0..100 {
            opened.inner.extend_now();
            if opened.inner.shared_head()?.1.is_some() {
                return Ok(opened);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(AuditError::Unavailable(
            "the shared audit log has no checkpoint and none could be made".into(),
        ))
    }

    fn start(
        place: Place,
        key: Arc<LogKey>,
        origin: &str,
        size: u64,
        end: u64,
    ) -> Result<Self, AuditError> {
        let (durable, _) = watch::channel(size);
        let inner = Arc::new(Inner {
            place,
            key,
            origin: origin.to_owned(),
            seq: Mutex::new(Sequencer {
                next: size,
                end,
                last_batch: 1,
                queue: BTreeMap::new(),
                building: BTreeSet::new(),
                epoch: 0,
                stopping: false,
            }),
            work: Condvar::new(),
            durable,
            fail_commits: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            failure: watch::channel(None).0,
            file: std::sync::OnceLock::new(),
            appended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (poke, extender) = match inner.place {
            Place::Local(_) => (None, None),
            Place::Shared { .. } => {
                let (poke, poked) = std::sync::mpsc::channel();
                let worker = Arc::clone(&inner);
                let extender = std::thread::Builder::new()
                    .name("writ-audit-tree".into())
                    .spawn(move || worker.extend_loop(poked))?;
                (Some(poke), Some(extender))
            }
        };
        let worker = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("writ-audit".into())
            .spawn(move || worker.run(poke))?;
        Ok(AuditLog {
            inner,
            writer: Mutex::new(Some(writer)),
            extender: Mutex::new(extender),
        })
    }

    /// The log's name (the checkpoint's origin line and the key's name).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The name this server reserves indexes under, in a log several servers share.
    pub fn owner(&self) -> Option<&str> {
        match &self.inner.place {
            Place::Local(_) => None,
            Place::Shared { owner, .. } => Some(owner),
        }
    }

    /// The verifier key of this server's log signing key.
    pub fn vkey(&self) -> &str {
        self.inner.key.vkey()
    }

    /// The verifier keys a checkpoint of this log may be signed with, one per line: this
    /// server's, or in a shared log every server's that published one.
    pub fn verifier_keys(&self) -> Result<String, AuditError> {
        match &self.inner.place {
            Place::Local(_) => Ok(self.inner.key.vkey().to_owned()),
            Place::Shared { log, .. } => Ok(log.keys()?.join("\n")),
        }
    }

    /// Records durable now.
    pub fn size(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// The size of the tree as it stands, which proofs may reach: this log's durable
    /// size, or with a shared log the store's (other servers extend it too, and this
    /// server's own view may lag).
    pub fn tree_size(&self) -> Result<u64, AuditError> {
        match &self.inner.place {
            Place::Local(_) => Ok(self.size()),
            Place::Shared { .. } => Ok(self.inner.shared_head()?.0.max(self.size())),
        }
    }

    /// Append transactions committed since this process opened the log (each one fsync
    /// and one signed checkpoint). Records appended over commits is the mean group-commit
    /// batch: for metrics and the benchmark in `examples/audit-load.rs`.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Records appended, commits and failed records since this process opened the log.
    pub fn counters(&self) -> Counters {
        Counters {
            appended: self.inner.appended.load(Ordering::Relaxed),
            commits: self.commits(),
            failed: self.inner.failed.load(Ordering::Relaxed),
        }
    }

    /// Follows the durable size.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    /// Appends `record` and waits until it is durable. Returns its index.
    pub fn append(&self, record: &Record) -> Result<u64, AuditError> {
        let bytes = encode(record)?;
        self.append_with(|_| Ok::<_, AuditError>((bytes, ())))
            .map(|(index, ())| index)
    }

    /// Appends the record `build` makes once it knows the index the record will have, and
    /// waits until it is durable; returns the index and what `build` returned beside the
    /// record. `build` runs outside the sequencer lock, concurrently with other callers'.
    /// If `build` fails its index holds a void record and the error is returned; if the
    /// append fails, `T` is dropped unseen.
    pub fn append_with<T, E: From<AuditError>>(
        &self,
        build: impl FnOnce(u64) -> Result<(Vec<u8>, T), E>,
    ) -> Result<(u64, T), E> {
        Ok(self.submit_with(build)?.wait()?)
    }

    /// Like [`AuditLog::append_with`] without waiting: many submissions then their waits
    /// share one commit. What `build` returned is only handed out by [`Pending::wait`],
    /// once the record is durable.
    pub fn submit_with<T, E: From<AuditError>>(
        &self,
        build: impl FnOnce(u64) -> Result<(Vec<u8>, T), E>,
    ) -> Result<Pending<T>, E> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (index, value) = self.enqueue(build, Done::Sync(tx))?;
        Ok(Pending { index, value, rx })
    }

    /// Submits `record` without waiting: [`Pending::wait`] returns once it is durable.
    pub fn submit(&self, record: &Record) -> Result<Pending<()>, AuditError> {
        let bytes = encode(record)?;
        self.submit_with(|_| Ok::<_, AuditError>((bytes, ())))
    }

    /// Appends `record` without blocking a thread; resolves once it is durable.
    pub async fn append_async(&self, record: &Record) -> Result<u64, AuditError> {
        let bytes = encode(record)?;
        let (tx, rx) = oneshot::channel();
        let (index, ()) = self.enqueue(|_| Ok::<_, AuditError>((bytes, ())), Done::Async(tx))?;
        rx.await
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))??;
        Ok(index)
    }

    fn enqueue<T, E: From<AuditError>>(
        &self,
        build: impl FnOnce(u64) -> Result<(Vec<u8>, T), E>,
        done: Done,
    ) -> Result<(u64, T), E> {
        let (index, epoch) = {
            let mut seq = self.inner.lock();
            if seq.stopping {
                return Err(AuditError::Unavailable("the audit log is closed".into()).into());
            }
            if seq.next == seq.end {
                self.inner.reserve(&mut seq)?;
            }
            let index = seq.next;
            seq.next += 1;
            seq.building.insert(index);
            (index, seq.epoch)
        };
        let made = match build(index) {
            Ok((bytes, _)) if bytes.len() > MAX_RECORD_LEN => {
                Err(AuditError::TooLarge(bytes.len()).into())
            }
            made => made,
        };
        let (queued, result) = match made {
            Ok((bytes, out)) => (Queued { index, bytes, done }, Ok((index, out))),
            Err(e) => match shared::void_record(unix_now(), &self.inner.origin, VOID_UNMADE) {
                Ok(bytes) => {
                    tracing::error!(
                        index,
                        "an audit record could not be made; its index holds a void record"
                    );
                    let void = Queued {
                        index,
                        bytes,
                        done: Done::Nobody,
                    };
                    (void, Err(e))
                }
                // Not reached (a fixed record encodes); the index is then left to the
                // commit's check that no record is missing, which fails the batch.
                Err(void) => return Err(void.into()),
            },
        };
        {
            let mut seq = self.inner.lock();
            if seq.epoch != epoch {
                // A commit failed while the record was made: its index was failed with
                // the batch (and, in a shared log, voided); nothing made for it is kept.
                drop(seq);
                let why = "an audit commit failed while the record was made";
                queued.done.send(Err(AuditError::Unavailable(why.into())));
                return match result {
                    Err(e) => Err(e),
                    Ok(_) => Err(AuditError::Unavailable(why.into()).into()),
                };
            }
            seq.building.remove(&index);
            seq.queue.insert(index, queued);
        }
        self.inner.work.notify_one();
        result
    }

    /// Records `[from, from + limit)` that are durable, in order.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let db = match &self.inner.place {
            Place::Local(db) => db,
            // Bounded by the tree as the store has it, which may be ahead of this
            // server's view: a checkpoint read just before covers no more than that.
            Place::Shared { log, .. } => return log.read(from, u64::MAX, limit),
        };
        let end = self.size();
        let tx = db.begin_read().map_err(db_err)?;
        let records = tx.open_table(RECORDS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in records.range(from..end).map_err(db_err)?.take(limit) {
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes the committed log, as it is at this instant (records, tree and signed
    /// checkpoint, from one read transaction), into a new file at `path` for a backup;
    /// returns how many records it holds. `None` for a log several servers share, which
    /// lives in their database (docs/operations.md, "Back up and restore").
    pub fn snapshot_to(&self, path: &Path) -> Result<Option<u64>, AuditError> {
        let db = match &self.inner.place {
            Place::Local(db) => db,
            Place::Shared { .. } => return Ok(None),
        };
        let tx = db.begin_read().map_err(db_err)?;
        let size = tx
            .open_table(RECORDS)
            .map_err(db_err)?
            .len()
            .map_err(db_err)?;
        crate::snapshot::copy(&tx, &[&RECORDS, &HASHES, &META], path).map_err(db_err)?;
        Ok(Some(size))
    }

    /// The latest signed checkpoint (made at every commit).
    pub fn checkpoint(&self) -> Result<Vec<u8>, AuditError> {
        let db = match &self.inner.place {
            Place::Local(db) => db,
            Place::Shared { .. } => {
                return self
                    .inner
                    .shared_head()?
                    .1
                    .ok_or_else(|| AuditError::Store("no checkpoint".into()));
            }
        };
        let tx = db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        meta.get("checkpoint")
            .map_err(db_err)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| AuditError::Store("no checkpoint".into()))
    }

    /// Proof that the tree of `new_size` records extends the tree of `old_size`
    /// (RFC 6962 consistency, in tlog's form).
    pub fn prove_consistency(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, AuditError> {
        let size = self.tree_size()?;
        if old_size > new_size || new_size > size {
            return Err(AuditError::Invalid(format!(
                "no consistency proof from {old_size} to {new_size} records (the log has {size})",
            )));
        }
        let db = match &self.inner.place {
            Place::Local(db) => db,
            Place::Shared { log, .. } => {
                return Ok(tlog_tiles::prove_tree(
                    new_size,
                    old_size,
                    &SharedHashes(log.as_ref()),
                )?);
            }
        };
        let tx = db.begin_read().map_err(db_err)?;
        let hashes = tx.open_table(HASHES).map_err(db_err)?;
        Ok(tlog_tiles::prove_tree(
            new_size,
            old_size,
            &TableHashes(&hashes),
        )?)
    }

    /// Proof that record `index` is in the tree of `size` records (RFC 6962 inclusion, in
    /// tlog's form): with the record's bytes and a checkpoint of that size, anyone can
    /// check it (`tlog_tiles::check_record`) without the rest of the log.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        let tree = self.tree_size()?;
        if index >= size || size > tree {
            return Err(AuditError::Invalid(format!(
                "no inclusion proof of record {index} in {size} records (the log has {tree})"
            )));
        }
        let db = match &self.inner.place {
            Place::Local(db) => db,
            Place::Shared { log, .. } => {
                return Ok(tlog_tiles::prove_record(
                    size,
                    index,
                    &SharedHashes(log.as_ref()),
                )?);
            }
        };
        let tx = db.begin_read().map_err(db_err)?;
        let hashes = tx.open_table(HASHES).map_err(db_err)?;
        Ok(tlog_tiles::prove_record(
            size,
            index,
            &TableHashes(&hashes),
        )?)
    }

    /// Whether the log can take records: its last commit did not fail and, a log of its
    /// own, its file is still the one opened (the readiness check of `grpc.health.v1`).
    pub fn check(&self) -> Result<(), AuditError> {
        if let Some(why) = self.inner.failure.borrow().as_ref() {
            return Err(AuditError::Unavailable(format!(
                "the last audit commit failed: {why}"
            )));
        }
        match self.inner.file.get() {
            Some(file) => file.check().map_err(AuditError::Store),
            None => Ok(()),
        }
    }

    /// Changes each time commits start or stop failing (see [`AuditLog::check`]).
    pub fn failures(&self) -> watch::Receiver<Option<String>> {
        self.inner.failure.subscribe()
    }

    /// Makes every commit fail until cleared: for tests of fail-closed behaviour.
    #[doc(hidden)]
    pub fn fail_commits(&self, fail: bool) {
        self.inner.fail_commits.store(fail, Ordering::SeqCst);
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.inner.lock().stopping = true;
        self.inner.work.notify_all();
        if let Some(writer) = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = writer.join();
        }
        // The writer's end dropped the extender's channel: it extends once more, ends.
        if let Some(extender) = self
            .extender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = extender.join();
        }
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, AuditError> {
    record
        .encode()
        .map_err(|e| AuditError::Invalid(format!("encoding a record: {e}")))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Sequencer> {
        self.seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer: takes everything queued, commits it in one transaction, reports.
    fn run(&self, poke: Option<std::sync::mpsc::Sender<()>>) {
        let shared = matches!(self.place, Place::Shared { .. });
        loop {
            let (batch, stopping) = {
                let mut seq = self.lock();
                // Stopping, it still commits what callers are making.
                if !(seq.ready() || (seq.stopping && seq.idle())) {
                    seq = if shared {
                        self.work
                            .wait_timeout(seq, SHARED_TICK)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    } else {
                        self.work
                            .wait(seq)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                    };
                }
                let batch = seq.take_ready();
                if !batch.is_empty() {
                    seq.last_batch = batch.len() as u64;
                }
                (batch, seq.stopping && seq.idle())
            };
            if batch.is_empty() {
                if shared {
                    self.close_unused();
                }
                if stopping {
                    return;
                }
                continue;
            }
            let outcome = self.commit(&batch);
            let failure = outcome.as_ref().err().map(ToString::to_string);
            self.failure.send_if_modified(|last| {
                let changed = *last != failure;
                *last = failure;
                changed
            });
            match outcome {
                Ok(size) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    self.appended
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Some(size) = size {
                        self.durable.send_replace(size);
                    }
                    for q in batch {
                        q.done.send(Ok(()));
                    }
                    if shared {
                        self.close_unused();
                        if let Some(poke) = &poke {
                            let _ = poke.send(());
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), "audit commit failed; the records and everything waiting on them are refused");
                    // Everything queued behind the failed batch was numbered after it:
                    // fail those too and number again from the durable size (or, in a
                    // shared log, from a new reservation: the places of these records
                    // are closed, whether or not the commit reached the store).
                    // Records still being made were numbered after it too: a new epoch
                    // refuses them when they are made.
                    let (rest, unfilled, building) = {
                        let mut seq = self.lock();
                        let unfilled = (seq.next, seq.end);
                        if shared {
                            seq.end = seq.next;
                        } else {
                            seq.next = *self.durable.borrow();
                        }
                        seq.epoch += 1;
                        let building = std::mem::take(&mut seq.building);
                        (std::mem::take(&mut seq.queue), unfilled, building)
                    };
                    let message = e.to_string();
                    let mut failed = vec![unfilled];
                    failed.extend(building.into_iter().map(|i| (i, i + 1)));
                    for q in batch.into_iter().chain(rest.into_values()) {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        failed.push((q.index, q.index + 1));
                        q.done.send(Err(AuditError::Unavailable(message.clone())));
                    }
                    if shared {
                        // Exactly this server's places: a batch may span two of its
                        // reservations, and what lies between is another server's.
                        for (from, to) in runs(failed) {
                            self.void_own(from, to, "its commit failed");
                        }
                    }
                }
            }
        }
    }

    /// Closes this server's unfilled reservation when nothing is queued (shared logs).
    fn close_unused(&self) {
        let unfilled = {
            let mut seq = self.lock();
            if seq.idle() && seq.next < seq.end {
                let unfilled = (seq.next, seq.end);
                seq.end = seq.next;
                Some(unfilled)
            } else {
                None
            }
        };
        if let Some((from, to)) = unfilled {
            self.void_own(from, to, "reserved and not used");
        }
    }

    /// The extender: whenever the writer committed, or every [`SHARED_TICK`], closes
    /// reservations others abandoned and extends the tree (taking in every server's
    /// records) unless another server is doing it now. Off the writer's thread, so a
    /// commit never waits for the tree.
    fn extend_loop(&self, poked: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let last = matches!(
                poked.recv_timeout(SHARED_TICK),
                Err(RecvTimeoutError::Disconnected)
            );
            while poked.try_recv().is_ok() {}
            self.extend_now();
            if last {
                return;
            }
        }
    }

    fn extend_now(&self) {
        let Place::Shared {
            log,
            swept,
            failing,
            ..
        } = &self.place
        else {
            return;
        };
        let sweep = {
            let mut last = swept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.elapsed() >= std::time::Duration::from_secs(1);
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        if sweep {
            self.close_abandoned(log.as_ref());
        }
        let key = Arc::clone(&self.key);
        let origin = self.origin.clone();
        let step: Arc<shared::ExtendFn> = Arc::new(move |size, records, known| {
            shared::extend_step(&key, &origin, size, records, known)
        });
        let extended = log.extend(step);
        match (
            &extended,
            failing.swap(extended.is_err(), Ordering::Relaxed),
        ) {
            (Ok(_), true) => tracing::info!("extending the shared audit log works again"),
            (Err(e), false) => {
                tracing::warn!(error = %e, "extending the shared audit log failed; retrying every {} ms", SHARED_TICK.as_millis());
            }
            _ => {}
        }
        // Otherwise another server is extending it (the next tick sees what it did), or
        // the store is unreachable (said above).
        if let Ok(Some(size)) = extended {
            self.durable.send_if_modified(|known| {
                let grew = size > *known;
                if grew {
                    *known = size;
                }
                grew
            });
        }
    }

    /// Closes `[from, to)` of this server's reservation with void records.
    fn void_own(&self, from: u64, to: u64, why: &str) {
        let Place::Shared { log, owner, .. } = &self.place else {
            return;
        };
        if from >= to {
            return;
        }
        let void = match shared::void_record(unix_now(), owner, why) {
            Ok(void) => void,
            Err(e) => {
                tracing::error!(error = %e, "encoding a void record");
                return;
            }
        };
        if let Err(e) = log.void(from, to, void) {
            // Any server closes it once it is old enough.
            tracing::warn!(error = %e, from, to, "closing this server's unused audit indexes failed; another server will");
        }
    }

    /// Closes reservations older than [`shared::ABANDONED_AFTER`]: their owner died or
    /// lost the store, and the tree cannot grow past them.
    fn close_abandoned(&self, log: &dyn SharedLog) {
        let abandoned = match log.abandoned(shared::ABANDONED_AFTER) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "looking for abandoned audit reservations failed");
                return;
            }
        };
        for (from, to, owner) in abandoned {
            // The owner's name is whatever the reservation row says: bounded here.
            let owner: String = owner.chars().take(128).collect();
            let why = "reserved by a server that did not write it in time";
            let result = shared::void_record(unix_now(), &owner, why)
                .and_then(|void| log.void(from, to, void));
            match result {
                Ok(()) => {
                    tracing::warn!(from, to, owner = ?owner, "closed audit indexes another server reserved and did not write")
                }
                Err(e) => {
                    tracing::warn!(error = %e, from, to, "closing abandoned audit indexes failed")
                }
            }
        }
    }

    /// A new reservation for a shared log, sized to the last commit (so a busy server
    /// asks the store once per batch, an idle one leaves few places to close).
    fn reserve(&self, seq: &mut Sequencer) -> Result<(), AuditError> {
        let Place::Shared { log, owner, .. } = &self.place else {
            return Err(AuditError::Store("the log has no index left".into()));
        };
        let count = seq.last_batch.clamp(1, shared::MAX_RESERVATION);
        let first = log.reserve(owner, count)?;
        seq.next = first;
        seq.end = first + count;
        Ok(())
    }

    fn shared_head(&self) -> Result<(u64, Option<Vec<u8>>), AuditError> {
        match &self.place {
            Place::Shared { log, .. } => log.head(),
            Place::Local(_) => Err(AuditError::Store("not a shared log".into())),
        }
    }

    /// Makes `batch` durable. A local log returns its new size; a shared log's size moves
    /// when the tree is extended.
    fn commit(&self, batch: &[Queued]) -> Result<Option<u64>, AuditError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(AuditError::Store("injected commit failure".into()));
        }
        let db = match &self.place {
            Place::Local(db) => db,
            Place::Shared { log, .. } => {
                log.insert(batch.iter().map(|q| (q.index, q.bytes.clone())).collect())?;
                return Ok(None);
            }
        };
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut size = *self.durable.borrow();
        {
            let mut records = tx.open_table(RECORDS).map_err(db_err)?;
            let mut hashes = tx.open_table(HASHES).map_err(db_err)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            for q in batch {
                if q.index != size {
                    return Err(AuditError::Store(format!(
                        "record {} queued where {size} was due",
                        q.index
                    )));
                }
                let new = tlog_tiles::stored_hashes(q.index, &q.bytes, &TableHashes(&hashes))?;
                let base = tlog_tiles::stored_hash_index(0, q.index);
                for (i, h) in new.iter().enumerate() {
                    hashes
                        .insert(base + i as u64, h.0.as_slice())
                        .map_err(db_err)?;
                }
                records
                    .insert(q.index, q.bytes.as_slice())
                    .map_err(db_err)?;
                size += 1;
            }
            let root = tlog_tiles::tree_hash(size, &TableHashes(&hashes))?;
            let note = self.key.checkpoint(&self.origin, size, root)?;
            meta.insert("checkpoint", note.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Some(size))
    }
}

/// Half-open ranges merged into maximal runs of consecutive indexes, in order.
fn runs(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(from, to)| from < to);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (from, to) in ranges {
        match out.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

/// When a void record is written: the system's clock (the log has no injected one).
fn unix_now() -> i64 {
    crate::clock::Clock::unix(&crate::clock::SystemClock)
}

/// Reads stored hashes from a redb table.
pub(super) struct TableHashes<'a, T>(pub &'a T);

impl<T: ReadableTable<u64, &'static [u8]>> HashReader for TableHashes<'_, T> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                let value = self
                    .0
                    .get(i)
                    .map_err(|e| tlog_tiles::Error::InvalidInput(e.to_string()))?
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
                let bytes: [u8; 32] = value
                    .value()
                    .try_into()
                    .map_err(|_| tlog_tiles::Error::MalformedHash)?;
                Ok(Hash(bytes))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::{Kind, verify_file};

    const ORIGIN: &str = "example.org/writ-audit";

    fn record(i: u64) -> Record {
        Record::new(i as i64, Kind::AdminChange, "test.append", format!("op{i}"))
    }

    #[test]
    fn concurrent_appends_are_durable_in_order_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = Arc::new(AuditLog::open(&path, dir.path(), ORIGIN).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| log.append(&record(t * 100 + i)).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut indexes: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..400).collect::<Vec<_>>());
        assert_eq!(log.size(), 400);
        assert_eq!(log.read(398, 10).unwrap().len(), 2);
        let proof = log.prove_consistency(100, 400).unwrap();
        assert!(!proof.is_empty());
        // Inclusion: record 123 against the signed checkpoint of all 400, from the proof
        // and the record's bytes alone.
        let cp =
            crate::audit::note::open_checkpoint(&log.checkpoint().unwrap(), log.vkey()).unwrap();
        assert_eq!(cp.size, 400);
        let (_, bytes) = log.read(123, 1).unwrap().pop().unwrap();
        let inclusion = log.prove_inclusion(123, 400).unwrap();
        tlog_tiles::check_record(
            &inclusion,
            400,
            cp.root,
            123,
            tlog_tiles::record_hash(&bytes),
        )
        .unwrap();
        assert!(
            tlog_tiles::check_record(
                &inclusion,
                400,
                cp.root,
                124,
                tlog_tiles::record_hash(&bytes)
            )
            .is_err()
        );
        assert!(log.prove_inclusion(400, 400).is_err());
        let vkey = log.vkey().to_owned();
        let kept = log.checkpoint().unwrap();
        drop(log);

        let v = verify_file(&path, &vkey, Some(&kept)).unwrap();
        assert_eq!(v.size, 400);
        // Reopening continues where it stopped.
        let log = AuditLog::open(&path, dir.path(), ORIGIN).unwrap();
        assert_eq!(log.append(&record(1)).unwrap(), 400);
    }

    #[test]
    fn failed_places_are_closed_in_runs_that_never_cover_a_gap() {
        // A batch spanning two reservations (10..12 and 20..22) with the rest of the
        // second one unused: the places between belong to another server.
        assert_eq!(
            runs(vec![
                (22, 25),
                (10, 11),
                (11, 12),
                (20, 21),
                (21, 22),
                (5, 5)
            ]),
            vec![(10, 12), (20, 25)]
        );
        assert_eq!(runs(vec![]), vec![]);
    }

    #[test]
    fn a_failed_commit_fails_its_records_and_the_log_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = AuditLog::open(&path, dir.path(), ORIGIN).unwrap();
        log.append(&record(0)).unwrap();
        log.fail_commits(true);
        let refused = log.append_with(|index| {
            Ok::<_, AuditError>((record(index).encode().unwrap(), "released"))
        });
        assert!(matches!(refused, Err(AuditError::Unavailable(_))));
        assert_eq!(log.size(), 1);
        log.fail_commits(false);
        assert_eq!(log.append(&record(2)).unwrap(), 1);
        let vkey = log.vkey().to_owned();
        drop(log);
        assert_eq!(verify_file(&path, &vkey, None).unwrap().size, 2);
    }

    /// Records are made outside the sequencer lock: a second caller's record is made
    /// (and committed) while the first caller's is still being made, and the first is
    /// written in its index's place after it.
    #[test]
    fn records_are_made_concurrently_and_written_in_index_order() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = Arc::new(AuditLog::open(&path, dir.path(), ORIGIN).unwrap());
        let (started, first_started) = channel();
        let (go, first_may_finish) = channel::<()>();
        let slow = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                log.append_with(|index| {
                    started.send(index).unwrap();
                    // Holds its index until the test has seen the second record made.
                    first_may_finish
                        .recv_timeout(Duration::from_secs(60))
                        .expect("the second record was made while this one was");
                    Ok::<_, AuditError>((record(index).encode().unwrap(), ()))
                })
                .unwrap()
                .0
            })
        };
        assert_eq!(first_started.recv().unwrap(), 0);
        // With the build under the lock, this would wait for the first build forever.
        let second = log
            .submit_with(|index| Ok::<_, AuditError>((record(index).encode().unwrap(), index)))
            .unwrap();
        go.send(()).unwrap();
        assert_eq!(second.wait().unwrap().0, 1);
        assert_eq!(slow.join().unwrap(), 0);
        assert_eq!(log.size(), 2);
        let vkey = log.vkey().to_owned();
        drop(log);
        assert_eq!(verify_file(&path, &vkey, None).unwrap().size, 2);
    }

    /// A record that cannot be made leaves a void record in its place (the log has no
    /// gap), the caller gets the error, and the records around it are written.
    #[test]
    fn a_record_that_cannot_be_made_leaves_a_void_and_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = AuditLog::open(&path, dir.path(), ORIGIN).unwrap();
        assert_eq!(log.append(&record(0)).unwrap(), 0);
        let failed = log.append_with(|_| {
            Err::<(Vec<u8>, ()), _>(AuditError::Invalid("the signer failed".into()))
        });
        assert!(matches!(failed, Err(AuditError::Invalid(_))), "{failed:?}");
        let too_large =
            log.append_with(|_| Ok::<_, AuditError>((vec![b'x'; MAX_RECORD_LEN + 1], ())));
        assert!(
            matches!(too_large, Err(AuditError::TooLarge(_))),
            "{too_large:?}"
        );
        assert_eq!(log.append(&record(3)).unwrap(), 3);
        let kinds: Vec<String> = log
            .read(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| Record::decode(&bytes).unwrap().action)
            .collect();
        assert_eq!(
            kinds,
            ["test.append", "audit.void", "audit.void", "test.append"]
        );
        let vkey = log.vkey().to_owned();
        drop(log);
        assert_eq!(verify_file(&path, &vkey, None).unwrap().size, 4);
    }

    /// A commit that fails while a record is being made: that record is refused when it
    /// is made (its index was renumbered), never written at an index now someone else's.
    #[test]
    fn a_record_made_across_a_failed_commit_is_refused_and_the_log_recovers() {
        use std::sync::mpsc::{Receiver, channel};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = Arc::new(AuditLog::open(&path, dir.path(), ORIGIN).unwrap());
        // A caller whose record is made when it is told to.
        let held = |log: &Arc<AuditLog>| {
            let (started, has_started) = channel();
            let (go, may_finish): (_, Receiver<()>) = channel();
            let log = Arc::clone(log);
            let thread = std::thread::spawn(move || {
                log.append_with(|index| {
                    started.send(index).unwrap();
                    may_finish.recv().unwrap();
                    Ok::<_, AuditError>((record(index).encode().unwrap(), "released"))
                })
            });
            (has_started.recv().unwrap(), go, thread)
        };
        let (first, release_first, first_caller) = held(&log);
        let (second, release_second, second_caller) = held(&log);
        assert_eq!((first, second), (0, 1));
        log.fail_commits(true);
        // 0 is made and its commit fails while 1 is still being made.
        release_first.send(()).unwrap();
        assert!(matches!(
            first_caller.join().unwrap(),
            Err(AuditError::Unavailable(_))
        ));
        log.fail_commits(false);
        // 1 is made for a numbering that no longer holds: refused, not queued.
        release_second.send(()).unwrap();
        assert!(matches!(
            second_caller.join().unwrap(),
            Err(AuditError::Unavailable(_))
        ));
        assert_eq!(log.append(&record(9)).unwrap(), 0);
        assert_eq!(log.append(&record(10)).unwrap(), 1);
        assert_eq!(log.size(), 2);
        let vkey = log.vkey().to_owned();
        drop(log);
        assert_eq!(verify_file(&path, &vkey, None).unwrap().size, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_appends_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            Arc::new(AuditLog::open(&dir.path().join("audit.redb"), dir.path(), ORIGIN).unwrap());
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.append_async(&record(i)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(log.size(), 500);
        assert!((1..=500).contains(&log.commits()));
    }
}
