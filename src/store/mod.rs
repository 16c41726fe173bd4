//! writ's durable state in one embedded redb database.
//!
//! Why redb and not sled: see docs/decisions/0001-redb.md. The rules here:
//! * No redb type leaves this module; callers see typed records and [`StoreError`].
//! * Every write is one transaction committed with `Durability::Immediate`: when a
//!   method returns `Ok`, the change survives `kill -9` and power loss.
//! * The schema version is stored; opening a database of another version is refused
//!   rather than misread.

use crate::ca::{AuthorityRecord, AuthorityStore, AuthorityStoreError, CaError};
use crate::policy::playbook::Playbook;
use crate::policy::{Grant, Incident, Profile, RevokedSerial};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use writ_verifier::Band;

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AUTHORITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("authorities");
const SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("bundle_sequences");
const SVIDS: TableDefinition<&str, &[u8]> = TableDefinition::new("svids");
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
const PLAYBOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("playbooks");
const REVOKED_SERIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked_serials");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("store: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("store: corrupt record in {table}: {reason}")]
    Corrupt {
        /// The table holding the record.
        table: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The database was written by another schema version.
    #[error("store: schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    Schema {
        /// The version found on disk.
        found: u64,
    },
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        CaError::Store(Box::new(e))
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A record of one issued X.509-SVID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID in the SVID.
    pub spiffe_id: String,
    /// The band (trust domain) that issued it.
    pub band: Band,
    /// The authority that signed it.
    pub authority_id: String,
    /// The incident it is bound to, if any.
    #[serde(default)]
    pub incident: Option<String>,
    /// The remediation grant it is bound to, if any. Left out of the record when absent,
    /// so that records without one stay readable by builds that predate the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// The embedded database.
pub struct Store {
    db: Database,
}

/// The CAs keep their authorities here, through the interface they own.
impl AuthorityStore for Store {
    fn authorities(
        &self,
        trust_domain: &str,
    ) -> Result<(Vec<AuthorityRecord>, u64), AuthorityStoreError> {
        Ok(Store::authorities(self, trust_domain)?)
    }

    fn put_authorities(
        &self,
        trust_domain: &str,
        records: &[AuthorityRecord],
        sequence: u64,
    ) -> Result<(), AuthorityStoreError> {
        Ok(Store::put_authorities(
            self,
            trust_domain,
            records,
            sequence,
        )?)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        // The store holds no private keys, but it is nobody else's business either.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Db(format!("chmod {}: {e}", path.display())))?;
        }
        let store = Store { db };
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
                Some(found) => return Err(StoreError::Schema { found }),
            }
            // Create every table up front so readers never meet a missing one.
            tx.open_table(AUTHORITIES).map_err(db_err)?;
            tx.open_table(SEQUENCES).map_err(db_err)?;
            tx.open_table(SVIDS).map_err(db_err)?;
            tx.open_table(PROFILES).map_err(db_err)?;
            tx.open_table(INCIDENTS).map_err(db_err)?;
            tx.open_table(JOIN_TOKENS).map_err(db_err)?;
            tx.open_table(GRANTS).map_err(db_err)?;
            tx.open_table(PLAYBOOKS).map_err(db_err)?;
            // Added after schema 1 shipped; created here on first open, empty.
            tx.open_table(REVOKED_SERIALS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Writes each `(key, value)` of `rows` as JSON into `table`, within `tx`.
    fn insert_json<'v, T: Serialize + 'v>(
        tx: &redb::WriteTransaction,
        table: TableDefinition<&str, &[u8]>,
        rows: impl IntoIterator<Item = (&'v str, &'v T)>,
    ) -> Result<(), StoreError> {
        let mut t = tx.open_table(table).map_err(db_err)?;
        for (key, value) in rows {
            let bytes = serde_json::to_vec(value).map_err(db_err)?;
            t.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        Ok(())
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        Ok(tx)
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        let version = meta.get("schema_version").map_err(db_err)?;
        Ok(version.map(|v| v.value()).unwrap_or(0))
    }

    /// The authorities of `trust_domain` and its bundle sequence number.
    pub fn authorities(
        &self,
        trust_domain: &str,
    ) -> Result<(Vec<AuthorityRecord>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(AUTHORITIES).map_err(db_err)?;
        let records = match table.get(trust_domain).map_err(db_err)? {
            Some(bytes) => {
                serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                    table: "authorities",
                    reason: e.to_string(),
                })?
            }
            None => Vec::new(),
        };
        let sequences = tx.open_table(SEQUENCES).map_err(db_err)?;
        let sequence = sequences
            .get(trust_domain)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((records, sequence))
    }

    /// Replaces the authorities of `trust_domain` and its bundle sequence, atomically.
    pub fn put_authorities(
        &self,
        trust_domain: &str,
        records: &[AuthorityRecord],
        sequence: u64,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(records).map_err(db_err)?;
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(AUTHORITIES).map_err(db_err)?;
            table
                .insert(trust_domain, bytes.as_slice())
                .map_err(db_err)?;
            let mut sequences = tx.open_table(SEQUENCES).map_err(db_err)?;
            sequences.insert(trust_domain, sequence).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Records an issued SVID. Durable when this returns.
    pub fn put_svid(&self, record: &SvidRecord) -> Result<(), StoreError> {
        self.put_svids(std::slice::from_ref(record))
    }

    /// Records issued SVIDs in one durable transaction (a batch of CSRs, one fsync).
    pub fn put_svids(&self, records: &[SvidRecord]) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        Self::insert_json(&tx, SVIDS, records.iter().map(|r| (r.serial.as_str(), r)))?;
        tx.commit().map_err(db_err)
    }

    /// Forgets SVIDs that expired before `now` (their issuance stays in the audit log):
    /// the table holds what is live, not everything ever issued. Returns how many went.
    /// A row that does not parse is kept, to be reported by whoever reads it.
    pub fn prune_expired_svids(&self, now: i64) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let mut pruned = 0;
        {
            let mut table = tx.open_table(SVIDS).map_err(db_err)?;
            table
                .retain(|_, bytes| {
                    let expired = decode_svid(bytes).is_ok_and(|r| r.not_after < now);
                    pruned += usize::from(expired);
                    !expired
                })
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(pruned)
    }

    /// One issued SVID by serial.
    pub fn svid(&self, serial: &str) -> Result<Option<SvidRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SVIDS).map_err(db_err)?;
        table
            .get(serial)
            .map_err(db_err)?
            .map(|bytes| decode_svid(bytes.value()))
            .transpose()
    }

    /// Every recorded SVID, by serial.
    pub fn svids(&self) -> Result<Vec<SvidRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SVIDS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, bytes) = entry.map_err(db_err)?;
            out.push(decode_svid(bytes.value())?);
        }
        Ok(out)
    }
}

impl Store {
    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        Self::insert_json(&tx, table, [(key, value)])?;
        tx.commit().map_err(db_err)
    }

    fn all_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        self.json_where(table, name, |_| true)
    }

    /// The rows of `table` that `keep` keeps, decoded one at a time (a load of live rows
    /// never holds the whole history at once).
    fn json_where<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        name: &'static str,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (_, bytes) = entry.map_err(db_err)?;
            let row: T =
                serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                    table: name,
                    reason: e.to_string(),
                })?;
            if keep(&row) {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// The incidents `keep` keeps (the registry loads live ones only).
    pub fn incidents_where(
        &self,
        keep: impl Fn(&Incident) -> bool,
    ) -> Result<Vec<Incident>, StoreError> {
        self.json_where(INCIDENTS, "incidents", keep)
    }

    /// The grants `keep` keeps.
    pub fn grants_where(&self, keep: impl Fn(&Grant) -> bool) -> Result<Vec<Grant>, StoreError> {
        self.json_where(GRANTS, "grants", keep)
    }

    fn one_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        t.get(key)
            .map_err(db_err)?
            .map(|bytes| {
                serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                    table: name,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// One incident by id, open or closed however long ago.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        self.one_json(INCIDENTS, "incidents", id)
    }

    /// One grant by id, in any state however long ago it ended.
    pub fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.one_json(GRANTS, "grants", id)
    }

    /// Writes (creates or replaces) a profile. Durable when this returns.
    pub fn put_profile(&self, profile: &Profile) -> Result<(), StoreError> {
        self.put_json(PROFILES, &profile.name, profile)
    }

    /// Deletes a profile; returns whether it existed.
    pub fn delete_profile(&self, name: &str) -> Result<bool, StoreError> {
        let tx = self.begin_write()?;
        let existed = {
            let mut t = tx.open_table(PROFILES).map_err(db_err)?;
            t.remove(name).map_err(db_err)?.is_some()
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Every profile.
    pub fn profiles(&self) -> Result<Vec<Profile>, StoreError> {
        self.all_json(PROFILES, "profiles")
    }

    /// Writes (creates or replaces) an incident. Durable when this returns.
    pub fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.put_json(INCIDENTS, &incident.id, incident)
    }

    /// Every incident, open and closed.
    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.all_json(INCIDENTS, "incidents")
    }

    /// Every grant.
    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.all_json(GRANTS, "grants")
    }

    /// Every revoked serial still kept (see [`crate::policy::serial`]).
    pub fn revoked_serials(&self) -> Result<Vec<RevokedSerial>, StoreError> {
        self.all_json(REVOKED_SERIALS, "revoked_serials")
    }

    /// Writes incidents and grants that change together (closing an incident revokes its
    /// grants) in one durable transaction: a crash keeps all of it or none.
    pub fn put_policy_changes(
        &self,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), StoreError> {
        self.put_policy_and_serial_changes(incidents, grants, &[], &[])
    }

    /// Like [`Store::put_policy_changes`], and in the same transaction adds the serials
    /// `revoked` and removes the entries of `pruned` (serials whose certificates expired).
    pub fn put_policy_and_serial_changes(
        &self,
        incidents: &[Incident],
        grants: &[Grant],
        revoked: &[RevokedSerial],
        pruned: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        Self::insert_json(
            &tx,
            REVOKED_SERIALS,
            revoked.iter().map(|e| (e.serial.as_str(), e)),
        )?;
        {
            let mut t = tx.open_table(REVOKED_SERIALS).map_err(db_err)?;
            for serial in pruned {
                t.remove(serial.as_str()).map_err(db_err)?;
            }
        }
        Self::insert_json(&tx, INCIDENTS, incidents.iter().map(|i| (i.id.as_str(), i)))?;
        Self::insert_json(&tx, GRANTS, grants.iter().map(|g| (g.id.as_str(), g)))?;
        tx.commit().map_err(db_err)
    }
}

impl Store {
    /// Writes (creates or replaces) a playbook. Durable when this returns.
    pub fn put_playbook(&self, playbook: &Playbook) -> Result<(), StoreError> {
        self.put_json(PLAYBOOKS, &playbook.name, playbook)
    }

    /// Every playbook, in every state.
    pub fn playbooks(&self) -> Result<Vec<Playbook>, StoreError> {
        self.all_json(PLAYBOOKS, "playbooks")
    }

    /// Writes playbooks and grants that change together (retiring a playbook revokes its
    /// activations) in one durable transaction: a crash keeps all of it or none.
    pub fn put_playbook_changes(
        &self,
        playbooks: &[Playbook],
        grants: &[Grant],
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        Self::insert_json(
            &tx,
            PLAYBOOKS,
            playbooks.iter().map(|p| (p.name.as_str(), p)),
        )?;
        Self::insert_json(&tx, GRANTS, grants.iter().map(|g| (g.id.as_str(), g)))?;
        tx.commit().map_err(db_err)
    }
}

/// A join token, stored by the SHA-256 of its secret (the secret itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRecord {
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub expires_at: i64,
    /// When it was used, if it was.
    #[serde(default)]
    pub used_at: Option<i64>,
    /// The node it admitted.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// What presenting a join token came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenUse {
    /// Valid; now used up.
    Consumed,
    /// No such token.
    Unknown,
    /// Already used.
    Replayed,
    /// Past its expiry.
    Expired,
}

impl Store {
    /// Stores a new join token under the hash of its secret.
    pub fn put_join_token(
        &self,
        hash_hex: &str,
        record: &JoinTokenRecord,
    ) -> Result<(), StoreError> {
        self.put_json(JOIN_TOKENS, hash_hex, record)
    }

    /// Uses a join token: checks and marks it used in one durable transaction, so two
    /// nodes racing with one token can never both succeed.
    pub fn consume_join_token(
        &self,
        hash_hex: &str,
        now: i64,
        node_id: &str,
    ) -> Result<TokenUse, StoreError> {
        let tx = self.begin_write()?;
        let outcome = {
            let mut table = tx.open_table(JOIN_TOKENS).map_err(db_err)?;
            let current: Option<JoinTokenRecord> = match table.get(hash_hex).map_err(db_err)? {
                Some(bytes) => Some(serde_json::from_slice(bytes.value()).map_err(|e| {
                    StoreError::Corrupt {
                        table: "join_tokens",
                        reason: e.to_string(),
                    }
                })?),
                None => None,
            };
            match current {
                None => TokenUse::Unknown,
                Some(record) if record.used_at.is_some() => TokenUse::Replayed,
                Some(record) if record.expires_at <= now => TokenUse::Expired,
                Some(mut record) => {
                    record.used_at = Some(now);
                    record.node_id = Some(node_id.to_owned());
                    let bytes = serde_json::to_vec(&record).map_err(db_err)?;
                    table.insert(hash_hex, bytes.as_slice()).map_err(db_err)?;
                    TokenUse::Consumed
                }
            }
        };
        if outcome == TokenUse::Consumed {
            tx.commit().map_err(db_err)?;
        } else {
            tx.abort().map_err(db_err)?;
        }
        Ok(outcome)
    }
}

fn decode_svid(bytes: &[u8]) -> Result<SvidRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: "svids",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
            not_before: 10,
            not_after: 20,
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
        let tx = store.begin_write().unwrap();
        tx.open_table(AUTHORITIES)
            .unwrap()
            .insert("bad.example", b"not json".as_slice())
            .unwrap();
        tx.commit().unwrap();
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

    #[test]
    fn expired_svids_are_pruned_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let record = |serial: &str, not_after: i64| SvidRecord {
            serial: serial.into(),
            spiffe_id: "spiffe://investigate.example.org/agent/a/incident/i".into(),
            band: crate::Band::Investigative,
            authority_id: "a".into(),
            incident: Some("i".into()),
            grant: None,
            not_before: 0,
            not_after,
        };
        store
            .put_svids(&[record("01", 100), record("02", 200), record("03", 300)])
            .unwrap();
        assert_eq!(store.prune_expired_svids(200).unwrap(), 1);
        let left: Vec<String> = store
            .svids()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(left, ["02", "03"]);
        assert_eq!(store.prune_expired_svids(200).unwrap(), 0);
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
    fn revoked_serials_are_added_and_pruned_in_one_write_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        let entry = |serial: &str| RevokedSerial {
            serial: serial.into(),
            spiffe_id: "spiffe://example.org/service/logs".into(),
            trust_domain: "example.org".into(),
            revoked_at: 1,
            revoked_by: "alice".into(),
            not_after: 2,
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .put_policy_and_serial_changes(&[], &[], &[entry("4001"), entry("4002")], &[])
                .unwrap();
            store
                .put_policy_and_serial_changes(&[], &[], &[entry("4003")], &["4001".into()])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let kept: Vec<String> = store
            .revoked_serials()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(kept, ["4002", "4003"]);
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
    fn join_tokens_are_single_use_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("writ.redb")).unwrap();
        let record = JoinTokenRecord {
            created_at: 0,
            expires_at: 100,
            used_at: None,
            node_id: None,
        };
        store.put_join_token("aa", &record).unwrap();
        store.put_join_token("bb", &record).unwrap();
        assert_eq!(
            store.consume_join_token("aa", 50, "n1").unwrap(),
            TokenUse::Consumed
        );
        assert_eq!(
            store.consume_join_token("aa", 51, "n2").unwrap(),
            TokenUse::Replayed
        );
        assert_eq!(
            store.consume_join_token("bb", 100, "n3").unwrap(),
            TokenUse::Expired
        );
        assert_eq!(
            store.consume_join_token("cc", 1, "n4").unwrap(),
            TokenUse::Unknown
        );
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
            Err(StoreError::Schema { found: 99 })
        ));
    }
}
