//! The tamper-evident audit log (docs/architecture.md, "Audit").
//!
//! An append-only Merkle log with RFC 6962 hashing, signed checkpoints in the C2SP
//! tlog-checkpoint / signed-note formats, and inclusion and consistency proofs.
//!
//! Crates chosen, not written: the tree math (stored-hash layout, tree hashes, record and
//! tree proofs) is `tlog_tiles`, and the note signatures are `signed_note`, both from
//! Cloudflare's Azul (their CT and tlog-tiles logs run on them), ports of Go's
//! `golang.org/x/mod/sumdb` packages that the C2SP specs grew out of. What is ours: the
//! record form ([`Record`]), where it is stored (redb, [`log`]), the group-commit writer,
//! and how verification reports what it found ([`verify`]).
//!
//! Fail-closed: callers that must not act without a record (issuance, approvals,
//! revocations, admin changes) append first and act only once the append is durable.

pub mod activity;
pub mod at_rest;
pub mod log;
pub mod note;
pub mod record;
pub mod shared;
pub mod verify;

pub use log::AuditLog;
pub use record::{Kind, Record, sha256_hex, visible_to};
pub use verify::{Verified, VerifyError};

use redb::ReadableTable;
use std::path::Path;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log could not make the record durable; whatever needed it was not done.
    #[error("the audit log is unavailable: {0}")]
    Unavailable(String),
    /// The store failed.
    #[error("audit store: {0}")]
    Store(String),
    /// The log's key is missing, malformed or does not match.
    #[error("audit log key: {0}")]
    Key(String),
    /// A record over [`record::MAX_RECORD_LEN`].
    #[error("audit record of {0} bytes is too large")]
    TooLarge(usize),
    /// A bad request (an index or size out of range).
    #[error("{0}")]
    Invalid(String),
    /// The tree math failed (a missing stored hash).
    #[error("audit tree: {0}")]
    Tree(#[from] tlog_tiles::Error),
    /// File I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The log's name for trust domain `base`: the checkpoint origin line and key name.
pub fn origin_for(base: &str) -> String {
    format!("{base}/writ-audit")
}

/// Verifies a log file at rest (a copy, a backup, or the store of a stopped server): the
/// stored leaf hashes, the log's own signed checkpoint, and `kept` if given. `vkey` is the
/// log's verifier key as the verifier knows it.
///
/// The file is opened for reading only and never written, not even to recover a log
/// that was not closed cleanly (see [`at_rest`]). A file that cannot be read (permission
/// denied, an I/O error, in use) is [`VerifyError::Unverifiable`], never tampering.
pub fn verify_file(path: &Path, vkey: &str, kept: Option<&[u8]>) -> Result<Verified, VerifyError> {
    Ok(verify_file_at_rest(path, vkey, kept)?.0)
}

/// Verifies a log several servers share, read straight from its store (docs/ha.md, "The
/// audit log"): every record the tree covers against the leaf hash stored for it, the
/// recomputed tree against the stored signed checkpoint, and `kept` if given. `vkeys` are
/// the servers' verifier keys, one per line, as the verifier pinned them; `None` takes
/// the ones published beside the log (which whoever can write the store could add to).
pub fn verify_shared(
    log: &dyn shared::SharedLog,
    vkeys: Option<&str>,
    kept: Option<&[u8]>,
) -> Result<Verified, VerifyError> {
    const PAGE: usize = 1024;
    let unreadable = |e: AuditError| VerifyError::Unverifiable(e.to_string());
    let (size, signed) = log.head().map_err(unreadable)?;
    let published;
    let vkeys = match vkeys {
        Some(keys) => keys,
        None => {
            published = log.keys().map_err(unreadable)?.join("\n");
            &published
        }
    };
    // Records and their stored leaf hashes, a page at a time.
    let leaves = std::cell::RefCell::new(std::collections::HashMap::new());
    let mut next = 0u64;
    let mut page: std::vec::IntoIter<(u64, Vec<u8>)> = Vec::new().into_iter();
    let records = std::iter::from_fn(|| {
        loop {
            if let Some(item) = page.next() {
                return Some(Ok(item));
            }
            if next >= size {
                return None;
            }
            let read = log.read(next, size, PAGE).map(|records| {
                let indexes: Vec<u64> = records
                    .iter()
                    .map(|(i, _)| tlog_tiles::stored_hash_index(0, *i))
                    .collect();
                // Stored leaves missing or unreadable: the page is checked against the
                // signed root alone (which still catches any change).
                let hashes = log.hashes(&indexes).unwrap_or_default();
                (records, hashes)
            });
            match read {
                Ok((records, _)) if records.is_empty() => {
                    // The head says more records exist than the store holds.
                    next = size;
                    return None;
                }
                Ok((records, hashes)) => {
                    let mut known = leaves.borrow_mut();
                    known.clear();
                    for ((i, _), h) in records.iter().zip(hashes) {
                        known.insert(*i, h);
                    }
                    next = records.last().map_or(size, |(i, _)| i + 1);
                    page = records.into_iter();
                }
                Err(e) => {
                    next = size;
                    return Some(Err(unreadable(e)));
                }
            }
        }
    });
    let stored_leaf = |i: u64| leaves.borrow().get(&i).copied();
    verify::verify(
        records,
        &verify::Inputs {
            vkey: vkeys,
            signed: signed.as_deref(),
            kept,
            stored_leaf: Some(&stored_leaf),
        },
    )
}

/// [`verify_file`], and whether the log had to be recovered in memory because it was not
/// closed cleanly (its writer was killed, or it was copied from a running server).
pub fn verify_file_at_rest(
    path: &Path,
    vkey: &str,
    kept: Option<&[u8]>,
) -> Result<(Verified, bool), VerifyError> {
    let db = at_rest::AtRest::open(path)?;
    let tx = db.begin_read()?;
    let table = |e: redb::TableError| match e {
        redb::TableError::Storage(e) => VerifyError::from(at_rest::storage_error(e)),
        // A missing or mistyped table: the file is a store, but not an intact log.
        other => VerifyError::Damaged(other.to_string()),
    };
    let storage = |e: redb::StorageError| VerifyError::from(at_rest::storage_error(e));
    let records = tx.open_table(log::RECORDS).map_err(table)?;
    let hashes = tx.open_table(log::HASHES).map_err(table)?;
    let meta = tx.open_table(log::META).map_err(table)?;
    let signed = meta
        .get("checkpoint")
        .map_err(storage)?
        .map(|v| v.value().to_vec());
    let stored_leaf = |i: u64| -> Option<tlog_tiles::Hash> {
        let v = hashes.get(tlog_tiles::stored_hash_index(0, i)).ok()??;
        v.value().try_into().ok().map(tlog_tiles::Hash)
    };
    let iter = records.iter().map_err(storage)?.map(|item| {
        item.map(|(k, v)| (k.value(), v.value().to_vec()))
            .map_err(storage)
    });
    let verified = verify::verify(
        iter,
        &verify::Inputs {
            vkey,
            signed: signed.as_deref(),
            kept,
            stored_leaf: Some(&stored_leaf),
        },
    )?;
    Ok((verified, db.recovered()))
}
