//! Consistent copies of a redb database while its owner keeps writing: every table, as
//! one read transaction sees it, into a new file (docs/operations.md, "Back up and
//! restore"). The store and the audit log each name their tables; a table the copy was
//! not told of is refused, never silently left out.
//!
//! Must never: write into an existing file (a copy is always a new file), or copy part of
//! a database and call it done.

use redb::{
    Database, Durability, Key, MultimapTableHandle, ReadTransaction, ReadableTable,
    TableDefinition, TableHandle, Value,
};
use std::collections::BTreeSet;
use std::path::Path;

/// Why a copy was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The database holds a table this build does not know how to copy.
    #[error("table {0:?} is not one this build knows: refusing an incomplete copy")]
    UnknownTable(String),
    /// The target already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// redb refused or failed.
    #[error("{0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Db(e.to_string())
}

/// One table the copy knows: its name, and how to copy its rows with their types.
pub trait CopyTable {
    /// The table's name.
    fn table_name(&self) -> &str;
    /// Copies every row of this table in `from` into `to`.
    fn copy(
        &self,
        from: &ReadTransaction,
        to: &redb::WriteTransaction,
    ) -> Result<(), SnapshotError>;
}

impl<K: Key + 'static, V: Value + 'static> CopyTable for TableDefinition<'_, K, V> {
    fn table_name(&self) -> &str {
        self.name()
    }

    fn copy(
        &self,
        from: &ReadTransaction,
        to: &redb::WriteTransaction,
    ) -> Result<(), SnapshotError> {
        let source = match from.open_table(*self) {
            Ok(table) => table,
            // Absent in the source: the copy has none either (the owner creates it on
            // open, as it does for a file made before the table existed).
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(db_err(e)),
        };
        let mut target = to.open_table(*self).map_err(db_err)?;
        for row in source.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            target.insert(k.value(), v.value()).map_err(db_err)?;
        }
        Ok(())
    }
}

/// Writes every table `from` sees into a new database at `path` (owner-only, durable
/// before this returns). `tables` must name every table `from` holds.
pub fn copy(
    from: &ReadTransaction,
    tables: &[&dyn CopyTable],
    path: &Path,
) -> Result<(), SnapshotError> {
    let known: BTreeSet<&str> = tables.iter().map(|t| t.table_name()).collect();
    for table in from.list_tables().map_err(db_err)? {
        if !known.contains(table.name()) {
            return Err(SnapshotError::UnknownTable(table.name().to_owned()));
        }
    }
    if let Some(table) = from.list_multimap_tables().map_err(db_err)?.next() {
        return Err(SnapshotError::UnknownTable(table.name().to_owned()));
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    SnapshotError::Exists(path.display().to_string())
                }
                _ => db_err(format!("create {}: {e}", path.display())),
            })?;
    }
    let db = Database::create(path).map_err(db_err)?;
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_durability(Durability::Immediate).map_err(db_err)?;
    for table in tables {
        table.copy(from, &tx)?;
    }
    tx.commit().map_err(db_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    const A: TableDefinition<&str, &[u8]> = TableDefinition::new("a");
    const B: TableDefinition<u64, &[u8]> = TableDefinition::new("b");

    fn fill(path: &Path) -> Database {
        let db = Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut a = tx.open_table(A).unwrap();
            a.insert("k", b"v".as_slice()).unwrap();
            let mut b = tx.open_table(B).unwrap();
            for i in 0..100u64 {
                b.insert(i, i.to_be_bytes().as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        db
    }

    #[test]
    fn a_copy_is_the_read_transactions_view_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = fill(&dir.path().join("src.redb"));
        let read = db.begin_read().unwrap();
        // Written after the read began: not in the copy.
        let tx = db.begin_write().unwrap();
        tx.open_table(A)
            .unwrap()
            .insert("later", b"x".as_slice())
            .unwrap();
        tx.commit().unwrap();
        let out = dir.path().join("copy.redb");
        copy(&read, &[&A, &B], &out).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let copied = Database::create(&out).unwrap();
        let tx = copied.begin_read().unwrap();
        let a = tx.open_table(A).unwrap();
        assert_eq!(a.get("k").unwrap().unwrap().value(), b"v");
        assert!(a.get("later").unwrap().is_none());
        let b = tx.open_table(B).unwrap();
        assert_eq!(b.len().unwrap(), 100);
        assert_eq!(b.get(42).unwrap().unwrap().value(), 42u64.to_be_bytes());
    }

    #[test]
    fn an_unknown_table_or_an_existing_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = fill(&dir.path().join("src.redb"));
        let read = db.begin_read().unwrap();
        let out = dir.path().join("copy.redb");
        let err = copy(&read, &[&A], &out).unwrap_err();
        assert!(
            matches!(err, SnapshotError::UnknownTable(ref t) if t == "b"),
            "{err}"
        );
        assert!(!out.exists());
        std::fs::write(&out, b"mine").unwrap();
        let err = copy(&read, &[&A, &B], &out).unwrap_err();
        assert!(matches!(err, SnapshotError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    }
}
