//! The embedded backend: one redb file in the data directory (docs/decisions/0001-redb.md).
//! Every write transaction commits with `Durability::Immediate`.

use super::{Backend, Change, StoreError, Table, Write, db_err};
use crate::health::OpenedFile;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// The layout version this build reads and writes. 2: tenants (a table of them, and
/// tenant-scoped keys, [`super::scoped_key`]). A schema 1 store is upgraded in place on
/// open: its rows are the default tenant's as they are, so only the version moves, and a
/// build that knows only schema 1 then refuses the store instead of misreading it. 3: the
/// live indexes ([`super::Store::live_incidents`]), built on first read; the version moves
/// so that a build without them, which would write rows they miss, refuses the store.
pub(super) const SCHEMA_VERSION: u64 = 3;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AUTHORITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("authorities");
const SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("bundle_sequences");

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

pub(super) struct Embedded {
    db: Database,
    /// The file opened, to notice it deleted or replaced (a readiness check).
    file: OpenedFile,
}

impl Embedded {
    pub(super) fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        // The store holds no private keys, but it is nobody else's business either.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Db(format!("chmod {}: {e}", path.display())))?;
        }
        let file =
            OpenedFile::at(path).map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
        let store = Embedded { db, file };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta
                .get("schema_version")
                .map_err(db_err)?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(db_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(1 | 2) => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(db_err)?;
                }
                Some(found) => {
                    return Err(StoreError::Schema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            // Create every table up front so readers never meet a missing one (tables
            // added after schema 1 shipped are created here on first open, empty).
            tx.open_table(AUTHORITIES).map_err(db_err)?;
            tx.open_table(SEQUENCES).map_err(db_err)?;
            for table in Table::ALL {
                tx.open_table(definition(table)).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        Ok(tx)
    }
}

/// The embedded store as one read transaction saw it ([`super::Store::snapshot`]).
pub struct Snapshot {
    tx: redb::ReadTransaction,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

impl Snapshot {
    /// Writes what the snapshot saw into a new store file at `path`: every table, the
    /// schema version with them.
    pub fn write_to(&self, path: &Path) -> Result<(), StoreError> {
        let rows: Vec<TableDefinition<'static, &'static str, &'static [u8]>> =
            Table::ALL.into_iter().map(definition).collect();
        let mut tables: Vec<&dyn crate::snapshot::CopyTable> =
            vec![&META, &AUTHORITIES, &SEQUENCES];
        tables.extend(rows.iter().map(|t| t as &dyn crate::snapshot::CopyTable));
        crate::snapshot::copy(&self.tx, &tables, path).map_err(db_err)
    }
}

impl Backend for Embedded {
    fn snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(Some(Snapshot {
            tx: self.db.begin_read().map_err(db_err)?,
        }))
    }

    fn check(&self) -> Result<(), StoreError> {
        self.file.check().map_err(StoreError::Db)?;
        self.schema_version().map(drop)
    }

    fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        let version = meta.get("schema_version").map_err(db_err)?;
        Ok(version.map(|v| v.value()).unwrap_or(0))
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(definition(table)).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(definition(table)).map_err(db_err)?;
        for entry in t.iter().map_err(db_err)? {
            let (_, bytes) = entry.map_err(db_err)?;
            visit(bytes.value())?;
        }
        Ok(())
    }

    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        for w in &writes {
            match w {
                Write::Put { table, key, body } => {
                    let mut t = tx.open_table(definition(*table)).map_err(db_err)?;
                    t.insert(key.as_str(), body.as_slice()).map_err(db_err)?;
                }
                Write::Delete { table, key } => {
                    let mut t = tx.open_table(definition(*table)).map_err(db_err)?;
                    t.remove(key.as_str()).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let tx = self.begin_write()?;
        let existed = {
            let mut t = tx.open_table(definition(table)).map_err(db_err)?;
            t.remove(key).map_err(db_err)?.is_some()
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }

    fn update(
        &self,
        table: Table,
        key: &str,
        change: Change,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // redb has one writer at a time: the write transaction is the lock.
        let tx = self.begin_write()?;
        let (current, next) = {
            let t = tx.open_table(definition(table)).map_err(db_err)?;
            let current = t.get(key).map_err(db_err)?.map(|v| v.value().to_vec());
            let next = change(current.as_deref())?;
            (current, next)
        };
        match next {
            Some(body) => {
                {
                    let mut t = tx.open_table(definition(table)).map_err(db_err)?;
                    t.insert(key, body.as_slice()).map_err(db_err)?;
                }
                tx.commit().map_err(db_err)?;
            }
            None => tx.abort().map_err(db_err)?,
        }
        Ok(current)
    }

    fn authorities(&self, trust_domain: &str) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(AUTHORITIES).map_err(db_err)?;
        let body = table
            .get(trust_domain)
            .map_err(db_err)?
            .map(|v| v.value().to_vec());
        let sequences = tx.open_table(SEQUENCES).map_err(db_err)?;
        let sequence = sequences
            .get(trust_domain)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((body, sequence))
    }

    fn put_authorities(
        &self,
        trust_domain: &str,
        body: Vec<u8>,
        sequence: u64,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(AUTHORITIES).map_err(db_err)?;
            table
                .insert(trust_domain, body.as_slice())
                .map_err(db_err)?;
            let mut sequences = tx.open_table(SEQUENCES).map_err(db_err)?;
            sequences.insert(trust_domain, sequence).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ca::{AuthorityRecord, AuthorityStore, CaError};
    use crate::store::{Store, SvidRecord};
    use writ_verifier::Band;

    #[test]
    fn the_cas_authority_store_is_this_database_and_its_errors_keep_their_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let cas: &dyn AuthorityStore = &store;
        assert_eq!(cas.authorities("td.example").unwrap(), (Vec::new(), 0));
        let record = AuthorityRecord {
            id: "0011223344556677".into(),
            state: crate::ca::AuthorityState::Active,
            cert_der: vec![0x30, 0x00],
            jwt_kid: "kid".into(),
            jwt_public: Some(vec![4, 1, 2]),
            not_before: 10,
            not_after: 20,
            tainted_at: Some(15),
        };
        cas.put_authorities("td.example", std::slice::from_ref(&record), 3)
            .unwrap();
        assert_eq!(
            cas.authorities("td.example").unwrap(),
            (vec![record.clone()], 3)
        );
        // What the CA wrote is what the store's own reader sees.
        assert_eq!(store.authorities("td.example").unwrap(), (vec![record], 3));

        // A corrupt row reaches the CA as its store error, with the store's message.
        store
            .backend
            .put_authorities("bad.example", b"not json".to_vec(), 1)
            .unwrap();
        let err = CaError::Store(cas.authorities("bad.example").unwrap_err());
        assert!(
            err.to_string()
                .starts_with("store: corrupt record in authorities:"),
            "{err}"
        );
        let err = CaError::from(StoreError::Db("disk full".into()));
        assert!(matches!(err, CaError::Store(_)));
        assert_eq!(err.to_string(), "store: disk full");
    }

    fn svid(serial: &str) -> SvidRecord {
        SvidRecord {
            serial: serial.into(),
            spiffe_id: "spiffe://investigate.example.org/agent/a/incident/i".into(),
            band: Band::Investigative,
            authority_id: "x".into(),
            incident: Some("i".into()),
            grant: None,
            not_before: 1,
            not_after: 2,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_svid(&svid("01")).unwrap();
            store.put_authorities("example.org", &[], 7).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.svid("01").unwrap(), Some(svid("01")));
        assert_eq!(store.authorities("example.org").unwrap().1, 7);
        assert_eq!(store.authorities("other.org").unwrap(), (vec![], 0));
    }

    #[test]
    fn svid_records_without_a_grant_omit_the_field() {
        let json = serde_json::to_value(svid("01")).unwrap();
        assert!(json.get("grant").is_none(), "{json}");
        let mut with = svid("02");
        with.grant = Some("g-1".into());
        let back: SvidRecord = serde_json::from_slice(&serde_json::to_vec(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Schema {
                found: 99,
                supported: SCHEMA_VERSION
            })
        ));
    }
}
