//! Opening a log file at rest (a copy, a backup, a stopped server's store) to read it,
//! and never writing it: verification must leave the evidence exactly as it found it.
//!
//! A log closed cleanly opens as a [`redb::ReadOnlyDatabase`]. A log that was not (its
//! writer was killed, or it was copied from a running server) needs redb's recovery,
//! which writes; it is opened over an `Overlay` instead, so that the recovery's writes
//! land in memory and are dropped with it. Errors are sorted by what they prove: the
//! operating system refusing to read (permissions, I/O, a running writer holding the
//! lock) says nothing about the log's integrity; a file whose bytes are not a sound store
//! does.

use redb::{ReadTransaction, ReadableDatabase, StorageBackend};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Why a log file could not be opened or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be read (permissions, I/O, missing, in use): nothing is known
    /// about its integrity.
    #[error("{0}")]
    Unreadable(String),
    /// The file was read, and its bytes are not a sound store.
    #[error("{0}")]
    Damaged(String),
}

/// A log file opened for reading only.
pub enum AtRest {
    /// Closed cleanly: read straight from the file.
    Clean(redb::ReadOnlyDatabase),
    /// Not closed cleanly: recovered in memory, over the untouched file.
    Recovered(redb::Database),
}

impl AtRest {
    /// Opens the store at `path` without ever writing to it.
    pub fn open(path: &Path) -> Result<AtRest, OpenError> {
        let shown = path.display();
        match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(AtRest::Clean(db)),
            Err(redb::DatabaseError::RepairAborted) => {
                let file = File::open(path).map_err(|e| io_error(&format!("{shown}"), e))?;
                let overlay = Overlay::new(file).map_err(|e| io_error(&format!("{shown}"), e))?;
                redb::Database::builder()
                    .create_with_backend(overlay)
                    .map(AtRest::Recovered)
                    .map_err(|e| database_error(path, e))
            }
            Err(e) => Err(database_error(path, e)),
        }
    }

    /// Whether the log needed recovery (it was not closed cleanly).
    pub fn recovered(&self) -> bool {
        matches!(self, AtRest::Recovered(_))
    }

    /// A read transaction over the whole store.
    pub fn begin_read(&self) -> Result<ReadTransaction, OpenError> {
        match self {
            AtRest::Clean(db) => db.begin_read(),
            AtRest::Recovered(db) => db.begin_read(),
        }
        .map_err(|e| match e {
            redb::TransactionError::Storage(e) => storage_error(e),
            other => OpenError::Unreadable(other.to_string()),
        })
    }
}

/// Sorts an I/O error: one the operating system reported (permission denied, no such
/// file, EIO) is about access; one made up by a reader (unexpected end of file, invalid
/// data) is about the bytes.
fn io_error(what: &str, e: io::Error) -> OpenError {
    if e.raw_os_error().is_some() || e.kind() == io::ErrorKind::PermissionDenied {
        OpenError::Unreadable(format!("{what}: {e}"))
    } else {
        OpenError::Damaged(format!("{what}: {e}"))
    }
}

/// Sorts a redb storage error the same way.
pub fn storage_error(e: redb::StorageError) -> OpenError {
    match e {
        redb::StorageError::Io(e) => io_error("reading the log", e),
        e @ redb::StorageError::Corrupted(_) => OpenError::Damaged(e.to_string()),
        other => OpenError::Unreadable(other.to_string()),
    }
}

fn database_error(path: &Path, e: redb::DatabaseError) -> OpenError {
    let shown = path.display();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OpenError::Unreadable(format!(
                "{shown} is in use by a running writ: verify through it (without --data-dir), or on a copy"
            ))
        }
        redb::DatabaseError::Storage(e) => match storage_error(e) {
            OpenError::Unreadable(m) => OpenError::Unreadable(format!("{shown}: {m}")),
            OpenError::Damaged(m) => OpenError::Damaged(format!("{shown}: {m}")),
        },
        e @ redb::DatabaseError::UpgradeRequired(_) => {
            OpenError::Damaged(format!("{shown} is not a log this writ wrote: {e}"))
        }
        other => OpenError::Unreadable(format!("{shown}: {other}")),
    }
}

/// Granularity of the overlay.
const BLOCK: u64 = 4096;

/// A file seen through a private, in-memory layer: reads come from the file unless a
/// block was written; writes, resizes and syncs touch only memory. redb needs a writable
/// backend to recover a store; this one gives it that without a single write reaching the
/// file (which is opened read-only, so one could not).
struct Overlay {
    file: File,
    state: Mutex<OverlayState>,
}

struct OverlayState {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file still visible below the overlay: shrinking hides the rest for
    /// good, so growing again reads zeros, as a real file would.
    file_visible: u64,
    /// Written blocks, by index.
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Overlay")
            .field("len", &state.len)
            .field("blocks", &state.blocks.len())
            .finish()
    }
}

impl Overlay {
    fn new(file: File) -> io::Result<Overlay> {
        let len = file.metadata()?.len();
        Ok(Overlay {
            file,
            state: Mutex::new(OverlayState {
                len,
                file_visible: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, OverlayState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Block `index` as it reads now.
    fn block(&self, state: &OverlayState, index: u64) -> io::Result<Vec<u8>> {
        if let Some(block) = state.blocks.get(&index) {
            return Ok(block.clone());
        }
        let mut block = vec![0u8; BLOCK as usize];
        let start = index * BLOCK;
        let from_file = state.file_visible.saturating_sub(start).min(BLOCK) as usize;
        if from_file > 0 {
            self.file.read_exact_at(&mut block[..from_file], start)?;
        }
        Ok(block)
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= state.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if end <= state.file_visible
            && state
                .blocks
                .range(offset / BLOCK..end.div_ceil(BLOCK))
                .next()
                .is_none()
        {
            return self.file.read_exact_at(out, offset);
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let block = self.block(&state, at / BLOCK)?;
            let within = (at % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock();
        if len < state.len {
            // Zero what lies past the new end inside its last block, drop the blocks after.
            let keep = len.div_ceil(BLOCK);
            state.blocks.retain(|index, _| *index < keep);
            if !len.is_multiple_of(BLOCK) {
                let index = len / BLOCK;
                let mut block = self.block(&state, index)?;
                block[(len % BLOCK) as usize..].fill(0);
                state.blocks.insert(index, block);
            }
            state.file_visible = state.file_visible.min(len);
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= state.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let mut done = 0usize;
        while (offset + done as u64) < end {
            let at = offset + done as u64;
            let index = at / BLOCK;
            let mut block = self.block(&state, index)?;
            let within = (at % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(data.len() - done);
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            state.blocks.insert(index, block);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn overlay(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, Overlay) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let o = Overlay::new(File::open(&path).unwrap()).unwrap();
        (dir, path, o)
    }

    #[test]
    fn writes_and_resizes_stay_in_memory() {
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, path, o) = overlay(&original);
        assert_eq!(o.len().unwrap(), 10_000);
        // A write across a block boundary reads back, and the bytes around it are the file's.
        o.write(4090, b"0123456789").unwrap();
        let mut out = vec![0u8; 30];
        o.read(4080, &mut out).unwrap();
        assert_eq!(&out[..10], &original[4080..4090]);
        assert_eq!(&out[10..20], b"0123456789");
        assert_eq!(&out[20..], &original[4100..4110]);
        // Shrinking then growing reads zeros past the old end, as a file would.
        o.set_len(5000).unwrap();
        o.set_len(12_000).unwrap();
        let mut tail = vec![1u8; 100];
        o.read(4990, &mut tail).unwrap();
        assert_eq!(&tail[..10], &original[4990..5000]);
        assert!(tail[10..].iter().all(|b| *b == 0));
        let mut past = vec![0u8; 1];
        assert!(
            o.read(12_000, &mut past).is_err(),
            "reads stop at the length"
        );
        o.sync_data().unwrap();
        // The file never changed.
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }

    #[test]
    fn access_errors_are_told_from_damage() {
        let denied = io::Error::from_raw_os_error(13);
        assert!(matches!(
            io_error("x", denied),
            OpenError::Unreadable(m) if m.contains("ermission denied")
        ));
        assert!(matches!(
            io_error("x", io::Error::from(io::ErrorKind::UnexpectedEof)),
            OpenError::Damaged(_)
        ));
        assert!(matches!(
            storage_error(redb::StorageError::Corrupted("bad page".into())),
            OpenError::Damaged(_)
        ));
    }
}
