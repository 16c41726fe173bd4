//! The tamper-evident audit log (DESIGN.md §6).
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
pub mod log;
pub mod note;
pub mod record;
pub mod verify;

pub use log::AuditLog;
pub use record::{Kind, Record, sha256_hex};
pub use verify::{Verified, VerifyError};

use redb::{ReadableDatabase, ReadableTable};
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
pub fn verify_file(path: &Path, vkey: &str, kept: Option<&[u8]>) -> Result<Verified, VerifyError> {
    let read = |e: &dyn std::fmt::Display| VerifyError::Read(e.to_string());
    if !path.exists() {
        return Err(VerifyError::Read(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let db = redb::Database::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => VerifyError::Read(format!(
            "{} is in use by a running writ: verify through it (without --data-dir), or on a copy",
            path.display()
        )),
        other => read(&other),
    })?;
    let tx = db.begin_read().map_err(|e| read(&e))?;
    let records = tx.open_table(log::RECORDS).map_err(|e| read(&e))?;
    let hashes = tx.open_table(log::HASHES).map_err(|e| read(&e))?;
    let meta = tx.open_table(log::META).map_err(|e| read(&e))?;
    let signed = meta
        .get("checkpoint")
        .map_err(|e| read(&e))?
        .map(|v| v.value().to_vec());
    let stored_leaf = |i: u64| -> Option<tlog_tiles::Hash> {
        let v = hashes.get(tlog_tiles::stored_hash_index(0, i)).ok()??;
        v.value().try_into().ok().map(tlog_tiles::Hash)
    };
    let iter = records.iter().map_err(|e| read(&e))?.map(|item| {
        item.map(|(k, v)| (k.value(), v.value().to_vec()))
            .map_err(|e| e.to_string())
    });
    verify::verify(
        iter,
        &verify::Inputs {
            vkey,
            signed: signed.as_deref(),
            kept,
            stored_leaf: Some(&stored_leaf),
        },
    )
}
