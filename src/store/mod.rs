//! writ's durable state: one typed interface, two backends.
//!
//! * [`Store`] is what the rest of writ sees: typed records in, typed records out,
//!   [`StoreError`] on failure. No database type leaves this module.
//! * The embedded backend (redb, `embedded.rs`) is the default and what `writ dev` uses:
//!   one file in the data directory, no database to run. Why redb: docs/decisions/0001-redb.md.
//! * The PostgreSQL backend (`postgres.rs`) is what several servers share
//!   (`store = "postgres://…"` in the server config; docs/ha.md).
//!
//! The rules both keep:
//! * Every write is one transaction, durable when the method returns `Ok` (redb:
//!   `Durability::Immediate`; PostgreSQL: a committed transaction): a change that spans
//!   rows (closing an incident revokes its grants) is kept whole or not at all.
//! * The schema version is stored; a database of another version is refused rather
//!   than misread.
//! * Rows are the records' JSON, so what a row means is decided here, once, for both.

mod embedded;
mod group;
mod postgres;
mod postgres_audit;

use crate::ca::{AuthorityRecord, AuthorityStore, AuthorityStoreError, CaError};
use crate::policy::playbook::Playbook;
use crate::policy::{DEFAULT_TENANT, Grant, Incident, Profile, RevokedSerial, Tenant};
use crate::sources::rules::SourceIncident;
use serde::{Deserialize, Serialize};
use std::path::Path;
use writ_verifier::Band;

pub use embedded::Snapshot;
pub use postgres::PostgresUrl;

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
    #[error("store: schema version {found} is not supported (this build reads {supported})")]
    Schema {
        /// The version found in the database.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
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

/// The tables whose rows are one record's JSON under a text key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Svids,
    Profiles,
    Incidents,
    JoinTokens,
    Grants,
    Playbooks,
    RevokedSerials,
    Tenants,
    SourceIncidents,
    /// The incidents that may be live, each a copy of its row (see [`Store::live_incidents`]).
    LiveIncidents,
    /// The grants that may be live, likewise.
    LiveGrants,
}

impl Table {
    /// Every table, so a backend creates them all up front.
    pub(crate) const ALL: [Table; 11] = [
        Table::Svids,
        Table::Profiles,
        Table::Incidents,
        Table::JoinTokens,
        Table::Grants,
        Table::Playbooks,
        Table::RevokedSerials,
        Table::Tenants,
        Table::SourceIncidents,
        Table::LiveIncidents,
        Table::LiveGrants,
    ];

    /// The table's name in either database (a fixed identifier, never caller text).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Svids => "svids",
            Table::Profiles => "profiles",
            Table::Incidents => "incidents",
            Table::JoinTokens => "join_tokens",
            Table::Grants => "grants",
            Table::Playbooks => "playbooks",
            Table::RevokedSerials => "revoked_serials",
            Table::Tenants => "tenants",
            Table::SourceIncidents => "source_incidents",
            Table::LiveIncidents => "live_incidents",
            Table::LiveGrants => "live_grants",
        }
    }
}

impl Table {
    /// Whether the table is policy: a write to it moves the policy version that replicas
    /// follow (SVID records and join tokens are not policy, nor the live indexes, which
    /// change with policy rows or only lose rows that are history).
    pub(crate) fn is_policy(self) -> bool {
        !matches!(
            self,
            Table::Svids | Table::JoinTokens | Table::LiveIncidents | Table::LiveGrants
        )
    }
}

/// One row change inside a transaction.
#[derive(Debug)]
pub(crate) enum Write {
    /// Create or replace the row `key` with `body` (a record's JSON).
    Put {
        table: Table,
        key: String,
        body: Vec<u8>,
    },
    /// Remove the row `key`, if it is there.
    Delete { table: Table, key: String },
}

/// Decides a row's new body from its current one (see [`Backend::update`]).
pub(crate) type Change =
    Box<dyn FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError> + Send + 'static>;

impl Write {
    pub(crate) fn table(&self) -> Table {
        match self {
            Write::Put { table, .. } | Write::Delete { table, .. } => *table,
        }
    }
}

/// What a backend is: rows of JSON under text keys, and transactions over them.
/// Everything typed (what a row means, which rows change together) is in [`Store`].
pub(crate) trait Backend: Send + Sync {
    /// The stored schema version.
    fn schema_version(&self) -> Result<u64, StoreError>;
    /// Whether the store still answers: a read that goes all the way to it (the
    /// readiness check of `grpc.health.v1`, docs/architecture.md "Health and reflection").
    fn check(&self) -> Result<(), StoreError> {
        self.schema_version().map(drop)
    }
    /// One row's body.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every row's body, in key order, handed to `visit` one at a time.
    fn scan(
        &self,
        table: Table,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Applies `writes` in one durable transaction.
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Removes a row; whether it was there.
    fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError>;
    /// Reads the row `key` with every other writer of it held off, lets `change` decide
    /// its new body (`None`: leave it), and commits: a read-modify-write no concurrent
    /// caller (thread or server) can interleave with. Returns the body `change` saw.
    fn update(
        &self,
        table: Table,
        key: &str,
        change: Change,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// A trust domain's authorities (JSON) and bundle sequence.
    fn authorities(&self, trust_domain: &str) -> Result<(Option<Vec<u8>>, u64), StoreError>;
    /// Replaces both, in one transaction.
    fn put_authorities(
        &self,
        trust_domain: &str,
        body: Vec<u8>,
        sequence: u64,
    ) -> Result<(), StoreError>;

    /// A consistent view of every table at this instant, for a backup; `None` for a
    /// store several servers share, which the database's own tools back up (docs/operations.md,
    /// "Back up and restore").
    fn snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }

    // What only a store several servers share has (docs/ha.md); a store one server owns
    // has one writer, whose memory is always current.

    /// Whether several servers may share this store.
    fn shared(&self) -> bool {
        false
    }
    /// The policy's version: how many policy writes have committed.
    fn policy_version(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Holds every other server's policy changes off until dropped.
    fn lock_policy(&self) -> Result<PolicyLock, StoreError> {
        Ok(PolicyLock { _held: None })
    }
    /// Records that `replica` has applied policy version `applied` (and, when that is the
    /// latest, grants it a lease from now); returns the latest version.
    fn heartbeat(&self, _replica: &str, applied: u64) -> Result<u64, StoreError> {
        Ok(applied)
    }
    /// Every replica's last heartbeat, as the database's clock saw it.
    fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        Ok(Vec::new())
    }
    /// Policy versions as they commit, from any server; `None` once the channel is lost.
    fn listen_policy(&self) -> Result<tokio::sync::mpsc::Receiver<u64>, StoreError> {
        Err(StoreError::Db(
            "this store is not shared: nothing to listen to".into(),
        ))
    }
    /// Posts a replica's request for an intermediate; returns its id.
    fn post_intermediate_request(
        &self,
        _request: &NewIntermediateRequest,
    ) -> Result<i64, StoreError> {
        Err(StoreError::Db(
            "this store is not shared: no replica asks it for an intermediate".into(),
        ))
    }
    /// One intermediate request.
    fn intermediate_request(&self, _id: i64) -> Result<Option<IntermediateRequest>, StoreError> {
        Ok(None)
    }
    /// Requests neither certified nor refused, oldest first.
    fn pending_intermediate_requests(&self) -> Result<Vec<IntermediateRequest>, StoreError> {
        Ok(Vec::new())
    }
    /// The latest request for each key and replica name, by key hash.
    fn latest_intermediate_requests(&self) -> Result<Vec<IntermediateRequest>, StoreError> {
        Ok(Vec::new())
    }
    /// Answers a pending request: a certificate, or why it is refused. Whether it was
    /// still pending (an answered request is never answered again).
    fn answer_intermediate_request(
        &self,
        _id: i64,
        _answer: &IntermediateAnswer,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// What a signing replica posts when it needs an intermediate for one CA: one of the
/// deployment's bands or a tenant's (docs/ha.md, "Signing replicas").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewIntermediateRequest {
    /// The replica's name.
    pub replica: String,
    /// The trust domain whose CA is to certify the key: the root's holder finds the CA by
    /// it, and refuses one it does not hold. `None` only in rows posted before the
    /// exchange was keyed by trust domain (PostgreSQL schema 5 and earlier): those were
    /// always the deployment's, and are read as the deployment's trust domain of `band`
    /// (the store cannot say which that is: it does not know the deployment's base).
    pub trust_domain: Option<spiffe::TrustDomain>,
    /// The band of that CA: shown by `writ replica list`, and what a row without a trust
    /// domain is read by.
    pub band: Band,
    /// The CSR (DER).
    pub csr: Vec<u8>,
    /// SHA-256 of the CSR's key, as the replica states it (the root's holder recomputes
    /// it from the CSR and never trusts this column).
    pub key_sha256: String,
}

/// One row of `intermediate_requests`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateRequest {
    /// Its id.
    pub id: i64,
    /// What was asked.
    pub request: NewIntermediateRequest,
    /// The certificate (DER), once the root's holder has certified it.
    pub certificate: Option<Vec<u8>>,
    /// Why it was refused, if it was.
    pub refused: Option<String>,
}

/// How the root's holder answers an intermediate request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntermediateAnswer {
    /// The certificate (DER).
    Certified(Vec<u8>),
    /// Refused, and why.
    Refused(String),
}

/// A cluster-wide policy lock (see [`Store::lock_policy`]); released when dropped.
#[must_use = "the lock is released when this is dropped"]
pub struct PolicyLock {
    _held: Option<postgres::HeldLock>,
}

/// One replica as the shared store last heard from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    /// The replica's name (`replica_name` in its config, and a suffix unique per start).
    pub name: String,
    /// The policy version it has applied.
    pub applied_version: u64,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// Milliseconds since its lease was last granted (it had the latest policy), if ever.
    pub lease_age_ms: Option<i64>,
}

/// Where the store lives, as the server config names it (`store = …`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreLocation {
    /// The embedded database, `writ.redb` in the data directory (the default).
    #[default]
    Embedded,
    /// A PostgreSQL database shared by every server of a cluster.
    Postgres(Box<PostgresUrl>),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "redb" {
            Ok(StoreLocation::Embedded)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres(Box::new(s.parse()?)))
        } else {
            Err("store must be \"redb\" or a \"postgres://…\" URL".into())
        }
    }
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

/// What presenting the token `record` at `now` comes to (before anything is written).
fn token_use(record: Option<&JoinTokenRecord>, now: i64) -> TokenUse {
    match record {
        None => TokenUse::Unknown,
        Some(r) if r.used_at.is_some() => TokenUse::Replayed,
        Some(r) if r.expires_at <= now => TokenUse::Expired,
        Some(_) => TokenUse::Consumed,
    }
}

/// writ's durable state (see the module docs).
pub struct Store {
    backend: std::sync::Arc<dyn Backend>,
    /// The audit log several servers share, when this store is shared.
    shared_log: Option<std::sync::Arc<dyn crate::audit::shared::SharedLog>>,
    /// Issued SVIDs' rows, committed in groups.
    svid_commits: group::GroupCommit,
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

fn decode<T: for<'de> Deserialize<'de>>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: table.name(),
        reason: e.to_string(),
    })
}

/// The key of a tenant-scoped row: its name in the default tenant (so rows written before
/// tenants existed are that tenant's, unchanged), `tenant/name` in any other. Names never
/// hold `/` ([`crate::policy::check_name`]), so no two keys collide.
pub(crate) fn scoped_key(tenant: &str, name: &str) -> String {
    if tenant == DEFAULT_TENANT {
        name.to_owned()
    } else {
        format!("{tenant}/{name}")
    }
}

/// A source incident's key: tenant and source names hold no `/`, so everything after
/// the second is the source's id, whatever it holds.
fn source_key(tenant: &str, source: &str, incident_id: &str) -> String {
    format!("{tenant}/{source}/{incident_id}")
}

fn put<T: Serialize>(table: Table, key: &str, value: &T) -> Result<Write, StoreError> {
    Ok(Write::Put {
        table,
        key: key.to_owned(),
        body: serde_json::to_vec(value).map_err(db_err)?,
    })
}

/// The writes of `incidents` and `grants`, each under its tenant-scoped key, and in the
/// live indexes: a row just written may be live.
fn policy_writes(incidents: &[Incident], grants: &[Grant]) -> Result<Vec<Write>, StoreError> {
    let mut writes = Vec::with_capacity(2 * (incidents.len() + grants.len()));
    for i in incidents {
        let key = scoped_key(&i.tenant, &i.id);
        writes.push(put(Table::Incidents, &key, i)?);
        writes.push(put(Table::LiveIncidents, &key, i)?);
    }
    for g in grants {
        let key = scoped_key(&g.tenant, &g.id);
        writes.push(put(Table::Grants, &key, g)?);
        writes.push(put(Table::LiveGrants, &key, g)?);
    }
    Ok(writes)
}

/// The key, in a live index, of the row saying the index is complete. No tenant-scoped
/// key starts with `/` (tenant names are never empty).
const INDEX_COMPLETE: &str = "/complete";
/// Its body (not a row of the table the index copies).
const INDEX_COMPLETE_BODY: &[u8] = br#"{"index":"complete"}"#;

/// The rows of a policy change, built without writing them: the registry decides a
/// change's rows, then writes them with every other change of its commit once their
/// audit records are durable ([`Store::write`]). The typed `put_…` methods below write
/// the same rows at once.
impl Store {
    /// A profile, created or replaced.
    pub(crate) fn profile_writes(profile: &Profile) -> Result<Vec<Write>, StoreError> {
        let key = scoped_key(&profile.tenant, &profile.name);
        Ok(vec![put(Table::Profiles, &key, profile)?])
    }

    /// A profile of `tenant`, removed (nothing if it is not there).
    pub(crate) fn profile_deletion(tenant: &str, name: &str) -> Vec<Write> {
        vec![Write::Delete {
            table: Table::Profiles,
            key: scoped_key(tenant, name),
        }]
    }

    /// A tenant, and the incidents and grants that change with it.
    pub(crate) fn tenant_writes(
        tenant: &Tenant,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<Vec<Write>, StoreError> {
        let mut writes = vec![put(Table::Tenants, &tenant.name, tenant)?];
        writes.extend(policy_writes(incidents, grants)?);
        Ok(writes)
    }

    /// Incidents and grants, the serials `revoked` added and the entries of `pruned`
    /// removed.
    pub(crate) fn policy_and_serial_writes(
        incidents: &[Incident],
        grants: &[Grant],
        revoked: &[RevokedSerial],
        pruned: &[String],
    ) -> Result<Vec<Write>, StoreError> {
        let mut writes = Vec::new();
        for e in revoked {
            writes.push(put(Table::RevokedSerials, &e.serial, e)?);
        }
        writes.extend(pruned.iter().map(|serial| Write::Delete {
            table: Table::RevokedSerials,
            key: serial.clone(),
        }));
        writes.extend(policy_writes(incidents, grants)?);
        Ok(writes)
    }

    /// A source incident's row, with the incidents and grants its delivery changed.
    pub(crate) fn source_writes(
        row: &SourceIncident,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<Vec<Write>, StoreError> {
        let key = source_key(&row.tenant, &row.source, &row.incident_id);
        let mut writes = vec![put(Table::SourceIncidents, &key, row)?];
        writes.extend(policy_writes(incidents, grants)?);
        Ok(writes)
    }

    /// Playbooks, and the grants that change with them.
    pub(crate) fn playbook_writes(
        playbooks: &[Playbook],
        grants: &[Grant],
    ) -> Result<Vec<Write>, StoreError> {
        let mut writes = Vec::new();
        for p in playbooks {
            writes.push(put(Table::Playbooks, &scoped_key(&p.tenant, &p.name), p)?);
        }
        writes.extend(policy_writes(&[], grants)?);
        Ok(writes)
    }

    /// Applies `writes`, in order, in one durable transaction (nothing when there are
    /// none).
    pub(crate) fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match writes.is_empty() {
            true => Ok(()),
            false => self.backend.write(writes),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the embedded database at `path` and checks its schema
    /// version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: std::sync::Arc::new(embedded::Embedded::open(path)?),
            shared_log: None,
            svid_commits: group::GroupCommit::default(),
        })
    }

    /// Connects to a PostgreSQL database, creating or upgrading writ's tables (under a
    /// lock, so servers starting together do it once) and checking the schema version.
    pub fn connect_postgres(url: &PostgresUrl) -> Result<Store, StoreError> {
        let postgres = std::sync::Arc::new(postgres::Postgres::connect(url)?);
        Ok(Store {
            backend: std::sync::Arc::clone(&postgres) as std::sync::Arc<dyn Backend>,
            shared_log: Some(postgres),
            svid_commits: group::GroupCommit::default(),
        })
    }

    /// The audit log several servers share in the PostgreSQL database at `url`, opened
    /// only to read it (no migration, nothing written): to verify it without trusting a
    /// server (`writ audit verify --store`).
    pub fn shared_log_to_read(
        url: &PostgresUrl,
    ) -> Result<std::sync::Arc<dyn crate::audit::shared::SharedLog>, StoreError> {
        Ok(std::sync::Arc::new(postgres::Postgres::connect_to_read(
            url,
        )?))
    }

    /// Opens the store `location` names; the embedded one is `writ.redb` in `data_dir`.
    pub fn open_at(location: &StoreLocation, data_dir: &Path) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Embedded => Store::open(&data_dir.join("writ.redb")),
            StoreLocation::Postgres(url) => Store::connect_postgres(url),
        }
    }

    /// Whether the store still answers and, embedded, is still the file at its path (one
    /// deleted or replaced under a running server takes writes no later start would see).
    pub fn check(&self) -> Result<(), StoreError> {
        self.backend.check()
    }

    /// The audit log several servers share (docs/ha.md, "The audit log"), when this store
    /// is shared; a server with a store of its own keeps its log in its data directory.
    pub fn shared_log(&self) -> Option<std::sync::Arc<dyn crate::audit::shared::SharedLog>> {
        self.shared_log.clone()
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        self.backend.schema_version()
    }

    /// Whether several servers may share this store (PostgreSQL): then each follows the
    /// others' policy changes (docs/ha.md).
    pub fn shared(&self) -> bool {
        self.backend.shared()
    }

    /// Every table as it is at this instant, to copy while writes go on
    /// ([`Snapshot::write_to`]); `None` for a shared store (PostgreSQL: its own tools
    /// back it up).
    pub fn snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        self.backend.snapshot()
    }

    /// The policy's version: every policy write moves it on in its own transaction.
    /// Always 0 in a store one server owns.
    pub fn policy_version(&self) -> Result<u64, StoreError> {
        self.backend.policy_version()
    }

    /// Holds every other server's policy changes off until the lock is dropped, so a
    /// change decided on current policy is written before anyone else decides.
    pub fn lock_policy(&self) -> Result<PolicyLock, StoreError> {
        self.backend.lock_policy()
    }

    /// Records that `replica` has applied policy version `applied`; when that is the
    /// latest, the database also records that its lease was granted now. Returns the
    /// latest version.
    pub fn heartbeat(&self, replica: &str, applied: u64) -> Result<u64, StoreError> {
        self.backend.heartbeat(replica, applied)
    }

    /// Every replica's last heartbeat.
    pub fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        self.backend.replicas()
    }

    /// Policy versions as any server commits them (LISTEN/NOTIFY); the receiver ends when
    /// the listening connection is lost.
    pub fn listen_policy(&self) -> Result<tokio::sync::mpsc::Receiver<u64>, StoreError> {
        self.backend.listen_policy()
    }

    /// A signing replica asks the root's holder for an intermediate (docs/ha.md);
    /// returns the request's id. Only a shared store takes requests.
    pub fn post_intermediate_request(
        &self,
        request: &NewIntermediateRequest,
    ) -> Result<i64, StoreError> {
        self.backend.post_intermediate_request(request)
    }

    /// The intermediate request `id`, if there is one.
    pub fn intermediate_request(&self, id: i64) -> Result<Option<IntermediateRequest>, StoreError> {
        self.backend.intermediate_request(id)
    }

    /// Intermediate requests not yet answered, oldest first.
    pub fn pending_intermediate_requests(&self) -> Result<Vec<IntermediateRequest>, StoreError> {
        self.backend.pending_intermediate_requests()
    }

    /// The latest intermediate request for each key (as its column states it) from each
    /// replica name, by key hash: what `writ replica list` shows (a request naming
    /// another replica's key shows as its own row).
    pub fn latest_intermediate_requests(&self) -> Result<Vec<IntermediateRequest>, StoreError> {
        self.backend.latest_intermediate_requests()
    }

    /// Answers a pending intermediate request; whether it was still pending.
    pub fn answer_intermediate_request(
        &self,
        id: i64,
        answer: &IntermediateAnswer,
    ) -> Result<bool, StoreError> {
        self.backend.answer_intermediate_request(id, answer)
    }

    fn one<T: for<'de> Deserialize<'de>>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.backend
            .get(table, key)?
            .map(|bytes| decode(table, &bytes))
            .transpose()
    }

    /// The rows of `table` that `keep` keeps, decoded one at a time (a load of live rows
    /// never holds the whole history at once).
    fn rows_where<T: for<'de> Deserialize<'de>>(
        &self,
        table: Table,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.backend.scan(table, &mut |bytes| {
            let row: T = decode(table, bytes)?;
            if keep(&row) {
                out.push(row);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        self.rows_where(table, |_| true)
    }

    /// The authorities of `trust_domain` and its bundle sequence number.
    pub fn authorities(
        &self,
        trust_domain: &str,
    ) -> Result<(Vec<AuthorityRecord>, u64), StoreError> {
        let (body, sequence) = self.backend.authorities(trust_domain)?;
        let records = match body {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                table: "authorities",
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        Ok((records, sequence))
    }

    /// Replaces the authorities of `trust_domain` and its bundle sequence, atomically.
    pub fn put_authorities(
        &self,
        trust_domain: &str,
        records: &[AuthorityRecord],
        sequence: u64,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(records).map_err(db_err)?;
        self.backend.put_authorities(trust_domain, body, sequence)
    }

    /// Records an issued SVID. Durable when this returns.
    pub fn put_svid(&self, record: &SvidRecord) -> Result<(), StoreError> {
        self.put_svids(std::slice::from_ref(record))
    }

    /// Records issued SVIDs durably, in one transaction with the rows of every other
    /// issuance that arrives meanwhile (group commit, `store::group`).
    pub fn put_svids(&self, records: &[SvidRecord]) -> Result<(), StoreError> {
        let writes = records
            .iter()
            .map(|r| put(Table::Svids, &r.serial, r))
            .collect::<Result<_, _>>()?;
        self.svid_commits
            .write(writes, |group| self.backend.write(group))
    }

    /// Forgets the rows of SVIDs that were never handed out (their issuance record could
    /// not be written after the rows were).
    pub fn forget_svids(&self, serials: &[String]) -> Result<(), StoreError> {
        let writes = serials
            .iter()
            .map(|serial| Write::Delete {
                table: Table::Svids,
                key: serial.clone(),
            })
            .collect();
        self.backend.write(writes)
    }

    /// Forgets SVIDs that expired before `now` (their issuance stays in the audit log):
    /// the table holds what is live, not everything ever issued. Returns how many went.
    /// A row that does not parse is kept, to be reported by whoever reads it.
    pub fn prune_expired_svids(&self, now: i64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        self.backend.scan(Table::Svids, &mut |bytes| {
            if let Ok(r) = decode::<SvidRecord>(Table::Svids, bytes)
                && r.not_after < now
            {
                expired.push(Write::Delete {
                    table: Table::Svids,
                    key: r.serial,
                });
            }
            Ok(())
        })?;
        let pruned = expired.len();
        if pruned > 0 {
            // Serials are never reissued, so a row found expired stays expired: deleting
            // it in a second transaction removes nothing live.
            self.backend.write(expired)?;
        }
        Ok(pruned)
    }

    /// One issued SVID by serial.
    pub fn svid(&self, serial: &str) -> Result<Option<SvidRecord>, StoreError> {
        self.one(Table::Svids, serial)
    }

    /// Every recorded SVID, by serial.
    pub fn svids(&self) -> Result<Vec<SvidRecord>, StoreError> {
        self.all(Table::Svids)
    }

    /// The incidents `keep` keeps (the registry loads live ones only).
    pub fn incidents_where(
        &self,
        keep: impl Fn(&Incident) -> bool,
    ) -> Result<Vec<Incident>, StoreError> {
        self.rows_where(Table::Incidents, keep)
    }

    /// The incidents `live` keeps, read from the live index, not the whole history
    /// (docs/performance.md, "Flat in history"). Every incident written is put in the
    /// index with its row; it leaves the index when a change takes it out of memory
    /// (`Store::retired_writes`) or here, when `live` no longer keeps it. So a start
    /// reads what is live and what ended lately, never all history.
    /// A store from before the index is indexed by one scan of its incidents, once.
    pub fn live_incidents(
        &self,
        live: impl Fn(&Incident) -> bool,
    ) -> Result<Vec<Incident>, StoreError> {
        self.live_rows(Table::LiveIncidents, Table::Incidents, live, |i| {
            scoped_key(&i.tenant, &i.id)
        })
    }

    /// Takes incidents and grants that are history now out of the live indexes (they
    /// stay in their tables).
    pub(crate) fn retired_writes(retired: &crate::policy::agent_view::Retired) -> Vec<Write> {
        let out = |table, keys: &[(String, String)]| {
            keys.iter()
                .map(|(tenant, id)| Write::Delete {
                    table,
                    key: scoped_key(tenant, id),
                })
                .collect::<Vec<_>>()
        };
        let mut writes = out(Table::LiveIncidents, &retired.incidents);
        writes.extend(out(Table::LiveGrants, &retired.grants));
        writes
    }

    /// The grants `live` keeps, as [`Store::live_incidents`].
    pub fn live_grants(&self, live: impl Fn(&Grant) -> bool) -> Result<Vec<Grant>, StoreError> {
        self.live_rows(Table::LiveGrants, Table::Grants, live, |g| {
            scoped_key(&g.tenant, &g.id)
        })
    }

    fn live_rows<T: for<'de> Deserialize<'de>>(
        &self,
        index: Table,
        table: Table,
        live: impl Fn(&T) -> bool,
        key_of: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut writes = Vec::new();
        if self.backend.get(index, INDEX_COMPLETE)?.is_none() {
            // Not built yet (a store from before the index, or a new one): build it from
            // the whole table, once, replacing whatever rows writes put there meanwhile.
            self.backend.scan(index, &mut |bytes| {
                let row: T = decode(index, bytes)?;
                writes.push(Write::Delete {
                    table: index,
                    key: key_of(&row),
                });
                Ok(())
            })?;
            self.backend.scan(table, &mut |bytes| {
                let row: T = decode(table, bytes)?;
                if live(&row) {
                    writes.push(Write::Put {
                        table: index,
                        key: key_of(&row),
                        body: bytes.to_vec(),
                    });
                    out.push(row);
                }
                Ok(())
            })?;
            writes.push(Write::Put {
                table: index,
                key: INDEX_COMPLETE.to_owned(),
                body: INDEX_COMPLETE_BODY.to_vec(),
            });
        } else {
            self.backend.scan(index, &mut |bytes| {
                if bytes == INDEX_COMPLETE_BODY {
                    return Ok(());
                }
                let row: T = decode(index, bytes)?;
                match live(&row) {
                    true => out.push(row),
                    // History now: it leaves the index (it stays in the table).
                    false => writes.push(Write::Delete {
                        table: index,
                        key: key_of(&row),
                    }),
                }
                Ok(())
            })?;
        }
        self.write(writes)?;
        Ok(out)
    }

    /// The grants `keep` keeps.
    pub fn grants_where(&self, keep: impl Fn(&Grant) -> bool) -> Result<Vec<Grant>, StoreError> {
        self.rows_where(Table::Grants, keep)
    }

    /// One incident of `tenant` by id, open or closed however long ago.
    pub fn incident(&self, tenant: &str, id: &str) -> Result<Option<Incident>, StoreError> {
        self.one(Table::Incidents, &scoped_key(tenant, id))
    }

    /// One grant of `tenant` by id, in any state however long ago it ended.
    pub fn grant(&self, tenant: &str, id: &str) -> Result<Option<Grant>, StoreError> {
        self.one(Table::Grants, &scoped_key(tenant, id))
    }

    /// Writes (creates or replaces) a profile. Durable when this returns.
    pub fn put_profile(&self, profile: &Profile) -> Result<(), StoreError> {
        self.backend.write(Self::profile_writes(profile)?)
    }

    /// Deletes a profile of `tenant`; returns whether it existed.
    pub fn delete_profile(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.backend
            .delete(Table::Profiles, &scoped_key(tenant, name))
    }

    /// Every tenant created, disabled ones included (the default tenant is never stored).
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.all(Table::Tenants)
    }

    /// Writes a tenant, and the incidents and grants that change with it (disabling a
    /// tenant closes its incidents), in one durable transaction.
    pub fn put_tenant_changes(
        &self,
        tenant: &Tenant,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), StoreError> {
        self.backend
            .write(Self::tenant_writes(tenant, incidents, grants)?)
    }

    /// Every profile.
    pub fn profiles(&self) -> Result<Vec<Profile>, StoreError> {
        self.all(Table::Profiles)
    }

    /// Writes (creates or replaces) an incident. Durable when this returns.
    pub fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.backend
            .write(policy_writes(std::slice::from_ref(incident), &[])?)
    }

    /// Every incident, open and closed.
    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.all(Table::Incidents)
    }

    /// Every grant.
    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.all(Table::Grants)
    }

    /// Every revoked serial still kept (see [`crate::policy::serial`]).
    pub fn revoked_serials(&self) -> Result<Vec<RevokedSerial>, StoreError> {
        self.all(Table::RevokedSerials)
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
        self.backend.write(Self::policy_and_serial_writes(
            incidents, grants, revoked, pruned,
        )?)
    }

    /// What is kept of source incident `incident_id` of source `source` in `tenant`
    /// (docs/incident-sources.md).
    pub fn source_incident(
        &self,
        tenant: &str,
        source: &str,
        incident_id: &str,
    ) -> Result<Option<SourceIncident>, StoreError> {
        self.one(
            Table::SourceIncidents,
            &source_key(tenant, source, incident_id),
        )
    }

    /// Writes a source incident's row with the incidents and grants its delivery changed
    /// (an open, or a close and the grants it ends), in one durable transaction: a
    /// delivery is handled, and remembered as handled, together or not at all.
    pub fn put_source_changes(
        &self,
        row: &SourceIncident,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), StoreError> {
        self.backend
            .write(Self::source_writes(row, incidents, grants)?)
    }

    /// Every playbook, in every state.
    pub fn playbooks(&self) -> Result<Vec<Playbook>, StoreError> {
        self.all(Table::Playbooks)
    }

    /// Stores a new join token under the hash of its secret.
    pub fn put_join_token(
        &self,
        hash_hex: &str,
        record: &JoinTokenRecord,
    ) -> Result<(), StoreError> {
        self.backend
            .write(vec![put(Table::JoinTokens, hash_hex, record)?])
    }

    /// Uses a join token: checks and marks it used in one transaction that holds every
    /// other user of the token off (in PostgreSQL, servers included), so two nodes racing
    /// with one token can never both succeed.
    pub fn consume_join_token(
        &self,
        hash_hex: &str,
        now: i64,
        node_id: &str,
    ) -> Result<TokenUse, StoreError> {
        let node_id = node_id.to_owned();
        let seen = self.backend.update(
            Table::JoinTokens,
            hash_hex,
            Box::new(move |current| {
                let Some(mut record) = current
                    .map(|bytes| decode::<JoinTokenRecord>(Table::JoinTokens, bytes))
                    .transpose()?
                else {
                    return Ok(None);
                };
                if token_use(Some(&record), now) != TokenUse::Consumed {
                    return Ok(None);
                }
                record.used_at = Some(now);
                record.node_id = Some(node_id);
                Ok(Some(serde_json::to_vec(&record).map_err(db_err)?))
            }),
        )?;
        // The same rule on the same row the change saw: what it decided.
        let seen: Option<JoinTokenRecord> = seen
            .map(|bytes| decode(Table::JoinTokens, &bytes))
            .transpose()?;
        let outcome = token_use(seen.as_ref(), now);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_is_consumed_once_before_its_expiry() {
        let record = |used_at: Option<i64>| JoinTokenRecord {
            created_at: 0,
            expires_at: 100,
            used_at,
            node_id: None,
        };
        assert_eq!(token_use(None, 1), TokenUse::Unknown);
        assert_eq!(token_use(Some(&record(None)), 99), TokenUse::Consumed);
        assert_eq!(token_use(Some(&record(None)), 100), TokenUse::Expired);
        assert_eq!(token_use(Some(&record(Some(5))), 6), TokenUse::Replayed);
        // A used token is reported as used, not expired, whenever it is presented again.
        assert_eq!(token_use(Some(&record(Some(5))), 500), TokenUse::Replayed);
    }

    #[test]
    fn the_store_setting_is_redb_or_a_postgres_url_and_nothing_else() {
        assert_eq!(
            "redb".parse::<StoreLocation>().unwrap(),
            StoreLocation::Embedded
        );
        assert!(matches!(
            "postgres://writ@db.internal/writ".parse::<StoreLocation>(),
            Ok(StoreLocation::Postgres(_))
        ));
        assert!(matches!(
            "postgresql:///writ?host=/run/postgresql".parse::<StoreLocation>(),
            Ok(StoreLocation::Postgres(_))
        ));
        for bad in [
            "",
            "sqlite://x",
            "mysql://db/writ",
            "REDB",
            "postgres://[::1",
        ] {
            assert!(bad.parse::<StoreLocation>().is_err(), "{bad:?} accepted");
        }
    }
}
