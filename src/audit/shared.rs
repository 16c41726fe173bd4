//! One log for several servers (docs/ha.md, "The audit log"; decision 0003).
//!
//! An issuance record's index is in the SVID's claims, so a server needs the index before
//! it signs, not when it commits. Each server therefore *reserves* a few consecutive
//! indexes at a time from the shared store, numbers its records from them, and commits
//! them in batches as the single-server log does. A reservation it does not fill (it went
//! idle, a commit failed) it closes at once with [`Kind::Void`] records; one a server never
//! closes (it died) any other server closes once the reservation is older than
//! [`ABANDONED_AFTER`]. A late commit into a closed place fails (the index is taken), so
//! whatever waited on it is never released: fail-closed, as a failed commit is.
//!
//! The Merkle tree covers the longest prefix without a gap. Whichever server gets the
//! log's head lock extends it ([`extend_step`], a pure function of the records after the
//! tree and the stored hashes it asks for) and signs the checkpoint with its own log key;
//! the verifier keys of every server are published beside the log.
//!
//! The store that holds the log implements [`SharedLog`]; the audit module owns the
//! trait, as the CA owns `AuthorityStore`.

use super::note::LogKey;
use super::{AuditError, Kind, Record};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use tlog_tiles::{Hash, HashReader};

/// A reservation older than this whose places are still empty is closed by any server.
/// Far above a commit's time (a commit that takes longer fails, fail-closed), far below
/// what an operator watching `writ audit checkpoint` would call stuck.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(10);

/// The most indexes reserved at once.
pub const MAX_RESERVATION: u64 = 256;

/// The most records one extension of the tree takes in.
pub const EXTEND_LIMIT: usize = 4096;

/// What an extension computed: the tree's new size, its new stored hashes (tlog's dense
/// numbering) and the signed checkpoint of that size.
#[derive(Debug)]
pub struct Extension {
    /// Records the tree covers now.
    pub size: u64,
    /// Stored-hash index → hash, for every hash the new records made.
    pub hashes: Vec<(u64, Hash)>,
    /// The signed checkpoint of `size` records.
    pub checkpoint: Vec<u8>,
}

/// One try at extending the tree.
#[derive(Debug)]
pub enum Step {
    /// Done: store this.
    Done(Extension),
    /// Stored hashes of the tree so far that the computation needs: fetch them and try
    /// again.
    Need(Vec<u64>),
}

/// How a store runs [`extend_step`] inside its transaction.
pub type ExtendFn =
    dyn Fn(u64, &[(u64, Vec<u8>)], &HashMap<u64, Hash>) -> Result<Step, AuditError> + Send + Sync;

/// A store several servers share, holding one audit log.
pub trait SharedLog: Send + Sync {
    /// Reserves `count` consecutive indexes for `owner`; returns the first.
    fn reserve(&self, owner: &str, count: u64) -> Result<u64, AuditError>;
    /// Writes `records` in one durable transaction; if any index is taken, writes none
    /// and fails.
    fn insert(&self, records: Vec<(u64, Vec<u8>)>) -> Result<(), AuditError>;
    /// Writes `void` at every index in `[from, to)` that holds nothing.
    fn void(&self, from: u64, to: u64, void: Vec<u8>) -> Result<(), AuditError>;
    /// Reservations older than `older_than` (first index, end, owner), oldest first.
    fn abandoned(&self, older_than: Duration) -> Result<Vec<(u64, u64, String)>, AuditError>;
    /// Under the log's head lock: reads the records after the tree (at most
    /// [`EXTEND_LIMIT`], in order, stopping at the first gap), runs `step` until it is
    /// done (fetching the stored hashes it asks for), stores the hashes, the new size and
    /// checkpoint, and drops the reservations the tree has passed. `None` when another
    /// server holds the lock (it is extending the tree now); else the tree's size.
    fn extend(&self, step: std::sync::Arc<ExtendFn>) -> Result<Option<u64>, AuditError>;
    /// The tree's size and its latest signed checkpoint (`None` before the first).
    fn head(&self) -> Result<(u64, Option<Vec<u8>>), AuditError>;
    /// Records `[from, min(to, tree size))`, at most `limit`, in order.
    fn read(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError>;
    /// Stored hashes by index (all of them, or an error).
    fn hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, AuditError>;
    /// Publishes a server's log verifier key.
    fn publish_key(&self, owner: &str, vkey: &str) -> Result<(), AuditError>;
    /// Every published verifier key, oldest first.
    fn keys(&self) -> Result<Vec<String>, AuditError>;
}

/// The record closing places `owner` reserved and did not fill.
pub fn void_record(time: i64, owner: &str, why: &str) -> Result<Vec<u8>, AuditError> {
    Record::new(time, Kind::Void, "audit.void", owner)
        .detail(serde_json::json!({ "reason": why }))
        .encode()
        .map_err(|e| AuditError::Invalid(format!("encoding a record: {e}")))
}

/// Extends the tree of `size` records by `records` (which must start at `size` and have
/// no gap), reading the tree's stored hashes from `known`. Asks for the ones it lacks
/// instead of failing, so a store can fetch them inside its transaction and call again.
pub fn extend_step(
    key: &LogKey,
    origin: &str,
    size: u64,
    records: &[(u64, Vec<u8>)],
    known: &HashMap<u64, Hash>,
) -> Result<Step, AuditError> {
    let reader = Overlay {
        known,
        new: RefCell::new(HashMap::new()),
        missing: RefCell::new(Vec::new()),
    };
    let mut hashes = Vec::new();
    let mut end = size;
    for (index, bytes) in records {
        if *index != end {
            return Err(AuditError::Store(format!(
                "record {index} offered where {end} was due"
            )));
        }
        match tlog_tiles::stored_hashes(*index, bytes, &reader) {
            Ok(new) => {
                let base = tlog_tiles::stored_hash_index(0, *index);
                for (i, h) in new.into_iter().enumerate() {
                    reader.new.borrow_mut().insert(base + i as u64, h);
                    hashes.push((base + i as u64, h));
                }
            }
            Err(tlog_tiles::Error::IndexesNotInTree) if !reader.missing.borrow().is_empty() => {
                return Ok(Step::Need(reader.missing.take()));
            }
            Err(e) => return Err(e.into()),
        }
        end += 1;
    }
    let root = match tlog_tiles::tree_hash(end, &reader) {
        Ok(root) => root,
        Err(tlog_tiles::Error::IndexesNotInTree) if !reader.missing.borrow().is_empty() => {
            return Ok(Step::Need(reader.missing.take()));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Step::Done(Extension {
        size: end,
        hashes,
        checkpoint: key.checkpoint(origin, end, root)?,
    }))
}

/// The stored hashes known before this extension, those it made, and what it lacked.
struct Overlay<'a> {
    known: &'a HashMap<u64, Hash>,
    new: RefCell<HashMap<u64, Hash>>,
    missing: RefCell<Vec<u64>>,
}

impl HashReader for Overlay<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let new = self.new.borrow();
        let mut out = Vec::with_capacity(indexes.len());
        let mut missing = self.missing.borrow_mut();
        for i in indexes {
            match new.get(i).or_else(|| self.known.get(i)) {
                Some(h) => out.push(*h),
                None => missing.push(*i),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(tlog_tiles::Error::IndexesNotInTree)
        }
    }
}

/// Reads stored hashes from a [`SharedLog`], for proofs.
pub(super) struct SharedHashes<'a>(pub &'a dyn SharedLog);

impl HashReader for SharedHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0
            .hashes(indexes)
            .map_err(|e| tlog_tiles::Error::InvalidInput(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const ORIGIN: &str = "example.org/writ-audit";

    fn records(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let r = Record::new(i as i64, Kind::AdminChange, "test", format!("op{i}"));
                (i, r.encode().unwrap())
            })
            .collect()
    }

    /// Runs steps as a store would: fetch what is asked, try again.
    fn extend_all(
        key: &LogKey,
        size: u64,
        recs: &[(u64, Vec<u8>)],
        stored: &HashMap<u64, Hash>,
    ) -> (Extension, usize) {
        let mut known = HashMap::new();
        let mut tries = 0;
        loop {
            tries += 1;
            match extend_step(key, ORIGIN, size, recs, &known).unwrap() {
                Step::Done(e) => return (e, tries),
                Step::Need(ix) => {
                    for i in ix {
                        known.insert(i, stored[&i]);
                    }
                }
            }
        }
    }

    #[test]
    fn extending_in_pieces_gives_the_tree_of_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), ORIGIN).unwrap();
        let all = records(0, 300);
        let mut stored = HashMap::new();
        let mut size = 0;
        // Uneven pieces, so some extensions start mid-subtree.
        for cut in [1usize, 7, 64, 65, 200, 300] {
            let (e, tries) = extend_all(&key, size, &all[size as usize..cut], &stored);
            assert!(tries <= 20, "{tries} tries");
            stored.extend(e.hashes.iter().copied());
            size = e.size;
            assert_eq!(size, cut as u64);
            let cp = crate::audit::note::open_checkpoint(&e.checkpoint, key.vkey()).unwrap();
            assert_eq!(cp.size, size);
        }
        // The same root as verification computes from scratch.
        let signed = extend_all(&key, 0, &all, &HashMap::new()).0.checkpoint;
        let v = crate::audit::verify::verify(
            all.iter().cloned().map(Ok),
            &crate::audit::verify::Inputs {
                vkey: key.vkey(),
                signed: Some(&signed),
                kept: None,
                stored_leaf: None,
            },
        )
        .unwrap();
        let mut reader = HashMap::new();
        reader.extend(stored);
        let piecewise = tlog_tiles::tree_hash(
            300,
            &Overlay {
                known: &reader,
                new: RefCell::default(),
                missing: RefCell::default(),
            },
        )
        .unwrap();
        assert_eq!(v.root, piecewise);
    }

    #[test]
    fn records_must_follow_the_tree_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), ORIGIN).unwrap();
        let mut recs = records(0, 3);
        recs.remove(1);
        assert!(extend_step(&key, ORIGIN, 0, &recs, &HashMap::new()).is_err());
        assert!(extend_step(&key, ORIGIN, 5, &records(0, 1), &HashMap::new()).is_err());
    }

    #[test]
    fn a_void_record_names_its_owner_and_is_a_valid_record() {
        let bytes = void_record(7, "host-a1b2", "idle").unwrap();
        let r = Record::decode(&bytes).unwrap();
        assert_eq!((r.kind, r.actor.as_str()), (Kind::Void, "host-a1b2"));
    }
}
