//! The PostgreSQL backend: the store several servers share (docs/ha.md).
//!
//! * tokio-postgres through a deadpool pool, on a runtime of its own (one thread it owns):
//!   the store's interface is synchronous, as redb's is, and a caller on any thread (a
//!   tokio worker included) waits for its answer on a plain channel, bounded by
//!   [`CALL_TIMEOUT`], never on a runtime it would have to block.
//! * Migrations are embedded ([`MIGRATIONS`]) and run at connect inside one transaction
//!   under an advisory lock, so servers starting together migrate once; a database newer
//!   than this build is refused.
//! * Rows are `(key text, body json)`: `json` keeps the record's text as written (jsonb
//!   would refuse a `\u0000` that redb keeps), and operators can still query it.
//! * A read-modify-write ([`Backend::update`]) locks its row (`SELECT … FOR UPDATE`) and
//!   writes with a compare-and-swap whose row count must be one: two servers racing one
//!   join token serialize on the row, and the loser sees it used.
//! * TLS to the database with rustls: `sslrootcert=/path/ca.pem` in the URL (libpq's name)
//!   makes TLS required and verifies the server's certificate and host name against that CA
//!   (libpq's `verify-full`). `sslmode=require` without it is refused: writ does not
//!   encrypt to a server it has not authenticated. Without it the connection is plain,
//!   for a Unix socket or loopback; a plain connection over the network is logged.

use super::{Backend, Change, StoreError, Table, Write};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Every schema change, in order; version N is the first N applied. Never edit one that
/// shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the embedded schema 1.
    "CREATE TABLE authorities (
         trust_domain text PRIMARY KEY,
         records json NOT NULL,
         sequence bigint NOT NULL);
     CREATE TABLE svids (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE profiles (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE incidents (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE join_tokens (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE grants (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE playbooks (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE revoked_serials (key text PRIMARY KEY, body json NOT NULL);",
    // 2: the policy's version, moved by every policy write in its own transaction, and
    // the replicas that follow it (docs/ha.md, "Revocation across replicas").
    "CREATE TABLE policy_head (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         version bigint NOT NULL);
     INSERT INTO policy_head (one, version) VALUES (true, 0);
     CREATE TABLE replicas (
         name text PRIMARY KEY,
         applied_version bigint NOT NULL,
         heartbeat_at timestamptz NOT NULL,
         lease_at timestamptz,
         started_at timestamptz NOT NULL);",
    // 3: one audit log for every server (docs/ha.md, "The audit log"): reservations of
    // indexes, the records, the tree's stored hashes, its head, and each server's log
    // verifier key.
    "CREATE TABLE audit_next (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         next bigint NOT NULL);
     INSERT INTO audit_next (one, next) VALUES (true, 0);
     CREATE TABLE audit_ranges (
         start bigint PRIMARY KEY,
         stop bigint NOT NULL,
         owner text NOT NULL,
         reserved_at timestamptz NOT NULL);
     CREATE TABLE audit_records (idx bigint PRIMARY KEY, body bytea NOT NULL);
     CREATE TABLE audit_hashes (idx bigint PRIMARY KEY, hash bytea NOT NULL);
     CREATE TABLE audit_head (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         size bigint NOT NULL,
         checkpoint bytea);
     INSERT INTO audit_head (one, size) VALUES (true, 0);
     CREATE TABLE audit_keys (
         vkey text PRIMARY KEY,
         owner text NOT NULL,
         added_at timestamptz NOT NULL);",
    // 4: signing replicas' requests for an intermediate, answered by the server that
    // holds the roots (docs/ha.md, "Signing replicas"). Admissions are not here: they live
    // on the root holder's host, so that write access to the database cannot admit a key.
    "CREATE TABLE intermediate_requests (
         id bigserial PRIMARY KEY,
         replica text NOT NULL,
         band text NOT NULL,
         csr bytea NOT NULL,
         key_sha256 text NOT NULL,
         requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
         certificate bytea,
         certified_at timestamptz,
         refused text,
         CHECK (certificate IS NULL OR refused IS NULL));",
    // 5: tenants (docs/multi-tenant.md). Rows written before are the default tenant's
    // under the keys they have; other tenants' rows are keyed `tenant/name`.
    "CREATE TABLE tenants (key text PRIMARY KEY, body json NOT NULL);",
    // 6: intermediate requests name the trust domain whose CA is to certify them, so a
    // replica can ask for tenants' band CAs too (docs/ha.md, "Signing replicas"). Rows
    // posted before keep it NULL: SQL cannot fill it (the deployment's base is in the
    // servers' configuration, not here), and they were all for the deployment's bands, so
    // the code that reads them takes the deployment's trust domain of their band.
    "ALTER TABLE intermediate_requests ADD COLUMN trust_domain text;",
    // 7: what each incident source's incidents led to, and the deliveries handled
    // (docs/incident-sources.md), keyed `tenant/source/source-incident-id`.
    "CREATE TABLE source_incidents (key text PRIMARY KEY, body json NOT NULL);",
    // 8: the live indexes: a copy of each incident and grant row that may be live, so a
    // server's start and reload read live state, not all history (docs/performance.md,
    // "Flat in history"). Empty here; the first server to read them builds them.
    "CREATE TABLE live_incidents (key text PRIMARY KEY, body json NOT NULL);
     CREATE TABLE live_grants (key text PRIMARY KEY, body json NOT NULL);",
];

/// The channel policy writes notify, with the new version as payload.
const POLICY_CHANNEL: &str = "writ_policy";

/// The advisory lock a policy change holds cluster-wide ("wrpc").
const POLICY_LOCK: i64 = 0x7772_7063;

/// The schema version this build reads and writes.
const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// The advisory lock key migrations hold ("writ" in ASCII).
const MIGRATION_LOCK: i64 = 0x7772_6974;

/// How long one store call may take, connection included, before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a statement may run, and wait for a lock, on the server.
const STATEMENT_OPTIONS: &str = "-c statement_timeout=15000 -c lock_timeout=10000";

/// The most connections one server holds.
const POOL_SIZE: usize = 16;

/// A PostgreSQL connection URL (`postgres://user@host/db`, `postgresql:///db?host=/run/postgresql`).
/// Its `Debug` and `Display` show where it points and never the password.
#[derive(Clone)]
pub struct PostgresUrl {
    text: String,
    config: tokio_postgres::Config,
    /// `sslrootcert`: the CA the server's certificate must chain to (TLS required).
    ca_file: Option<PathBuf>,
}

/// Takes libpq's `sslrootcert=` out of a URL's query (tokio-postgres does not know it):
/// the URL without it, and its value, percent-decoded.
fn take_root_cert(url: &str) -> Result<(String, Option<PathBuf>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut kept = Vec::new();
    let mut ca = None;
    for pair in query.split('&') {
        match pair.strip_prefix("sslrootcert=") {
            Some(value) => {
                let path = percent_decode(value)
                    .ok_or("store: sslrootcert is not a valid percent-encoded path")?;
                if !path.starts_with('/') {
                    return Err("store: sslrootcert must be an absolute path".into());
                }
                ca = Some(PathBuf::from(path));
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, ca))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PostgresUrl {}

impl std::str::FromStr for PostgresUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, ca_file) = take_root_cert(s)?;
        // tokio-postgres's own parser; its error never repeats the URL (or a password).
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("store: not a PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("store: the PostgreSQL URL names no host (use host=/run/postgresql for a Unix socket)".into());
        }
        match (&ca_file, config.get_ssl_mode()) {
            (None, SslMode::Require) => {
                return Err(
                    "store: sslmode=require needs sslrootcert=/path/to/ca.pem: writ verifies the database's certificate"
                        .into(),
                );
            }
            (Some(_), SslMode::Disable) => {
                return Err("store: sslrootcert and sslmode=disable contradict each other".into());
            }
            (Some(_), _) => {
                config.ssl_mode(SslMode::Require);
            }
            (None, _) => {
                // Without a CA to verify against, plain (prefer would try TLS it cannot
                // verify): a Unix socket, loopback, or a network the operator trusts.
                config.ssl_mode(SslMode::Disable);
            }
        }
        Ok(PostgresUrl {
            text: s.to_owned(),
            config,
            ca_file,
        })
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        write!(
            f,
            "postgres://{}@{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

pub(super) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Db(format!("postgres: {}: {}", db.code().code(), db.message())),
        None => StoreError::Db(format!("postgres: {e}")),
    }
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Db(format!("postgres: {other}")),
    }
}

fn text(body: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(body).map_err(|_| StoreError::Db("store: a record is not UTF-8".into()))
}

/// Moves the policy's version on, within the transaction of the write that changes it,
/// and notifies every replica listening (delivered when, and only if, it commits).
async fn bump_policy(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let version: i64 = tx
        .query_one(
            "UPDATE policy_head SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&POLICY_CHANNEL, &version.to_string()],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// A connection whose messages (notifications among them) a task drives, TLS or not.
trait PolledConnection: Send {
    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> PolledConnection for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        self.poll_message(cx)
    }
}

/// rustls for the database: the CA in `path` only, ring, host names checked.
fn client_tls(path: &std::path::Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        StoreError::Db(format!(
            "store: reading sslrootcert {}: {e}",
            path.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            StoreError::Db(format!(
                "store: reading sslrootcert {}: {e}",
                path.display()
            ))
        })?;
        roots
            .add(cert)
            .map_err(|e| StoreError::Db(format!("store: sslrootcert {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(StoreError::Db(format!(
            "store: sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Db(format!("store: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Says so when the store is reached over a network without TLS.
fn warn_if_plain_over_network(config: &tokio_postgres::Config) {
    for host in config.get_hosts() {
        if let Host::Tcp(name) = host
            && !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        {
            tracing::warn!(host = %name, "the connection to PostgreSQL is not encrypted; name its CA with sslrootcert= in the store URL to require TLS");
        }
    }
}

/// A session holding the policy lock; dropping it unlocks on the backend's runtime (a
/// connection that cannot unlock is closed, which unlocks too).
pub(super) struct HeldLock {
    handle: tokio::runtime::Handle,
    client: Option<deadpool_postgres::Object>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.handle.spawn(async move {
                if client
                    .execute("SELECT pg_advisory_unlock($1)", &[&POLICY_LOCK])
                    .await
                    .is_err()
                {
                    drop(deadpool_postgres::Object::take(client));
                }
            });
        }
    }
}

/// The PostgreSQL backend (see the module docs).
pub(super) struct Postgres {
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// For the connection that listens (outside the pool: it lives as long as it listens).
    config: tokio_postgres::Config,
    /// TLS to the database, when the URL names its CA.
    tls: Option<MakeRustlsConnect>,
    /// Dropping it ends the runtime's thread (the runtime is dropped there, not here,
    /// which may be inside another runtime).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Postgres {
    /// Connects, migrates and checks the schema version.
    pub(super) fn connect(url: &PostgresUrl) -> Result<Postgres, StoreError> {
        let backend = Self::connect_only(url)?;
        backend.migrate()?;
        Ok(backend)
    }

    /// Connects to read what is there, changing nothing (no migration): for verifying
    /// the audit log at rest. The schema must be one this build reads.
    pub(super) fn connect_to_read(url: &PostgresUrl) -> Result<Postgres, StoreError> {
        let backend = Self::connect_only(url)?;
        let found = backend.schema_version()?;
        if found == 0 || found > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(backend)
    }

    fn connect_only(url: &PostgresUrl) -> Result<Postgres, StoreError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("writ-postgres".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("writ-postgres")
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| StoreError::Db(format!("postgres: starting its thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| StoreError::Db("postgres: its thread did not start".into()))?
            .map_err(|e| StoreError::Db(format!("postgres: runtime: {e}")))?;

        let mut config = url.config.clone();
        if config.get_application_name().is_none() {
            config.application_name("writ");
        }
        if config.get_options().is_none() {
            config.options(STATEMENT_OPTIONS);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let tls = match &url.ca_file {
            Some(path) => Some(MakeRustlsConnect::new(client_tls(path)?)),
            None => {
                warn_if_plain_over_network(&config);
                None
            }
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Db(format!("postgres: pool: {e}")))?;
        let backend = Postgres {
            handle,
            pool,
            config,
            tls,
            _stop: stop,
        };
        Ok(backend)
    }

    /// Runs `work` on the backend's runtime and waits for its answer.
    pub(super) fn run<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        self.handle.spawn(async move {
            let _ = tx.send(work(pool).await);
        });
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Db(format!(
                "postgres: no answer within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.run(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg_err)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS writ_meta (key text PRIMARY KEY, value bigint NOT NULL)",
            )
            .await
            .map_err(pg_err)?;
            let found: i64 = tx
                .query_opt(
                    "SELECT value FROM writ_meta WHERE key = 'schema_version'",
                    &[],
                )
                .await
                .map_err(pg_err)?
                .map(|row| row.get(0))
                .unwrap_or(0);
            let found = u64::try_from(found).unwrap_or(u64::MAX);
            if found > SCHEMA_VERSION {
                return Err(StoreError::Schema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tx.batch_execute(migration).await.map_err(pg_err)?;
                let version = i as i64 + 1;
                tx.execute(
                    "INSERT INTO writ_meta (key, value) VALUES ('schema_version', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&version],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)
        })
    }
}

impl Backend for Postgres {
    fn schema_version(&self) -> Result<u64, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    "SELECT value FROM writ_meta WHERE key = 'schema_version'",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(row
                .map(|r| r.get::<_, i64>(0))
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0))
        })
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let sql = format!("SELECT body::text FROM {} WHERE key = $1", table.name());
            let row = client.query_opt(&sql, &[&key]).await.map_err(pg_err)?;
            Ok(row.map(|r| r.get::<_, String>(0).into_bytes()))
        })
    }

    fn scan(
        &self,
        table: Table,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Byte order of keys, as redb iterates, whatever the database's collation.
        let rows = self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT body::text FROM {} ORDER BY key COLLATE \"C\"",
                table.name()
            );
            let rows = client.query(&sql, &[]).await.map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        })?;
        for body in rows {
            visit(body.as_bytes())?;
        }
        Ok(())
    }

    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            for w in &writes {
                match w {
                    Write::Put { table, key, body } => {
                        let sql = format!(
                            "INSERT INTO {} (key, body) VALUES ($1, $2::text::json)
                             ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body",
                            table.name()
                        );
                        tx.execute(&sql, &[key, &text(body)?])
                            .await
                            .map_err(pg_err)?;
                    }
                    Write::Delete { table, key } => {
                        let sql = format!("DELETE FROM {} WHERE key = $1", table.name());
                        tx.execute(&sql, &[key]).await.map_err(pg_err)?;
                    }
                }
            }
            if writes.iter().any(|w| w.table().is_policy()) {
                bump_policy(&tx).await?;
            }
            tx.commit().await.map_err(pg_err)
        })
    }

    fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let sql = format!("DELETE FROM {} WHERE key = $1", table.name());
            let existed = tx.execute(&sql, &[&key]).await.map_err(pg_err)? > 0;
            if existed && table.is_policy() {
                bump_policy(&tx).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(existed)
        })
    }

    fn update(
        &self,
        table: Table,
        key: &str,
        change: Change,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let select = format!(
                "SELECT body::text FROM {} WHERE key = $1 FOR UPDATE",
                table.name()
            );
            let current: Option<String> = tx
                .query_opt(&select, &[&key])
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
            let Some(next) = change(current.as_deref().map(str::as_bytes))? else {
                // Dropping the transaction rolls it back.
                return Ok(current.map(String::into_bytes));
            };
            // A compare-and-swap on the row read: exactly one row must change, or
            // nothing is committed.
            let (sql, changed) = match &current {
                Some(seen) => {
                    let sql = format!(
                        "UPDATE {} SET body = $2::text::json WHERE key = $1 AND body::text = $3",
                        table.name()
                    );
                    let n = tx
                        .execute(&sql, &[&key, &text(&next)?, seen])
                        .await
                        .map_err(pg_err)?;
                    (sql, n)
                }
                None => {
                    let sql = format!(
                        "INSERT INTO {} (key, body) VALUES ($1, $2::text::json) ON CONFLICT (key) DO NOTHING",
                        table.name()
                    );
                    let n = tx
                        .execute(&sql, &[&key, &text(&next)?])
                        .await
                        .map_err(pg_err)?;
                    (sql, n)
                }
            };
            if changed != 1 {
                return Err(StoreError::Db(format!(
                    "postgres: {changed} rows changed where one was locked ({})",
                    sql.split_whitespace().next().unwrap_or("")
                )));
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(current.map(String::into_bytes))
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn policy_version(&self) -> Result<u64, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let v: i64 = client
                .query_one("SELECT version FROM policy_head", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(u64::try_from(v).unwrap_or(0))
        })
    }

    fn lock_policy(&self) -> Result<super::PolicyLock, StoreError> {
        let client = self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&POLICY_LOCK])
                .await
                .map_err(pg_err)?;
            Ok(client)
        })?;
        Ok(super::PolicyLock {
            _held: Some(HeldLock {
                handle: self.handle.clone(),
                client: Some(client),
            }),
        })
    }

    fn heartbeat(&self, replica: &str, applied: u64) -> Result<u64, StoreError> {
        let replica = replica.to_owned();
        let applied = i64::try_from(applied)
            .map_err(|_| StoreError::Db("store: policy version out of range".into()))?;
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // The lease is granted by the database's clock, in the statement that reads
            // the head: a commit the statement did not see happened after the grant
            // began, and whoever waits on it waits out the whole lease.
            // Servers restart under new names: one silent for a day is gone for good
            // (dropped in the same statement, not in a round trip of its own).
            let head: i64 = client
                .query_one(
                    "WITH gone AS (
                         DELETE FROM replicas
                         WHERE heartbeat_at < clock_timestamp() - interval '1 day' AND name <> $1),
                     head AS (SELECT version FROM policy_head)
                     INSERT INTO replicas (name, applied_version, heartbeat_at, lease_at, started_at)
                     SELECT $1, $2, clock_timestamp(),
                            CASE WHEN $2 >= head.version THEN clock_timestamp() END,
                            clock_timestamp()
                     FROM head
                     ON CONFLICT (name) DO UPDATE SET
                         applied_version = EXCLUDED.applied_version,
                         heartbeat_at = EXCLUDED.heartbeat_at,
                         lease_at = COALESCE(EXCLUDED.lease_at, replicas.lease_at)
                     RETURNING (SELECT version FROM head)",
                    &[&replica, &applied],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(u64::try_from(head).unwrap_or(0))
        })
    }

    fn replicas(&self) -> Result<Vec<super::ReplicaRow>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT name, applied_version,
                            (EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at) * 1000)::bigint,
                            (EXTRACT(EPOCH FROM clock_timestamp() - lease_at) * 1000)::bigint
                     FROM replicas ORDER BY name COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| super::ReplicaRow {
                    name: r.get(0),
                    applied_version: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    heartbeat_age_ms: r.get(2),
                    lease_age_ms: r.get(3),
                })
                .collect())
        })
    }

    fn listen_policy(&self) -> Result<tokio::sync::mpsc::Receiver<u64>, StoreError> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let (versions, receiver) = tokio::sync::mpsc::channel(64);
        self.run(move |_| async move {
            let (client, mut connection) = match tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls).await.map_err(pg_err)?;
                    (client, Box::new(connection) as Box<dyn PolledConnection>)
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await.map_err(pg_err)?;
                    (client, Box::new(connection) as Box<dyn PolledConnection>)
                }
            };
            let (notes, mut noted) = tokio::sync::mpsc::unbounded_channel();
            // The connection is driven here; its notifications are passed on, and when it
            // ends (the database restarted, the network went) the senders drop and the
            // listener's receiver ends: it knows it may have missed something.
            tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            // A payload that is not a version still means "look".
                            let _ = notes.send(n.payload().parse::<u64>().unwrap_or(0));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {POLICY_CHANNEL}"))
                .await
                .map_err(pg_err)?;
            tokio::spawn(async move {
                let _listening = client;
                while let Some(version) = noted.recv().await {
                    if versions.send(version).await.is_err() {
                        break;
                    }
                }
            });
            Ok(())
        })?;
        Ok(receiver)
    }

    fn post_intermediate_request(
        &self,
        request: &super::NewIntermediateRequest,
    ) -> Result<i64, StoreError> {
        let request = request.clone();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(
                    "INSERT INTO intermediate_requests (replica, band, csr, key_sha256, trust_domain)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[
                        &request.replica,
                        &request.band.as_str(),
                        &request.csr,
                        &request.key_sha256,
                        &request.trust_domain.as_ref().map(|td| td.to_string()),
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok(row.get(0))
        })
    }

    fn intermediate_request(
        &self,
        id: i64,
    ) -> Result<Option<super::IntermediateRequest>, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(&format!("{REQUEST_COLUMNS} WHERE id = $1"), &[&id])
                .await
                .map_err(pg_err)?;
            row.map(|r| request_row(&r)).transpose()
        })
    }

    fn pending_intermediate_requests(&self) -> Result<Vec<super::IntermediateRequest>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // Requests are answered in seconds and their replicas read the answer at once:
            // a week-old row, answered or not, is nobody's any more. Dropped in the same
            // statement that reads the pending ones.
            let rows = client
                .query(
                    &format!(
                        "WITH gone AS (
                             DELETE FROM intermediate_requests
                             WHERE requested_at < clock_timestamp() - interval '7 days'
                             RETURNING id)
                         {REQUEST_COLUMNS}
                         WHERE certificate IS NULL AND refused IS NULL
                           AND id NOT IN (SELECT id FROM gone)
                         ORDER BY id"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(readable_requests(&rows))
        })
    }

    fn latest_intermediate_requests(&self) -> Result<Vec<super::IntermediateRequest>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT id, replica, band, csr, key_sha256, certificate, refused, trust_domain FROM (
                         SELECT DISTINCT ON (key_sha256, replica) * FROM intermediate_requests
                         ORDER BY key_sha256, replica, id DESC) latest
                     ORDER BY key_sha256, replica LIMIT 1000",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(readable_requests(&rows))
        })
    }

    fn answer_intermediate_request(
        &self,
        id: i64,
        answer: &super::IntermediateAnswer,
    ) -> Result<bool, StoreError> {
        let answer = answer.clone();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let (certificate, refused) = match answer {
                super::IntermediateAnswer::Certified(der) => (Some(der), None),
                super::IntermediateAnswer::Refused(why) => (None, Some(why)),
            };
            let changed = client
                .execute(
                    "UPDATE intermediate_requests
                     SET certificate = $2, refused = $3,
                         certified_at = CASE WHEN $2::bytea IS NULL THEN NULL ELSE clock_timestamp() END
                     WHERE id = $1 AND certificate IS NULL AND refused IS NULL",
                    &[&id, &certificate, &refused],
                )
                .await
                .map_err(pg_err)?;
            Ok(changed == 1)
        })
    }

    fn authorities(&self, trust_domain: &str) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        let trust_domain = trust_domain.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    "SELECT records::text, sequence FROM authorities WHERE trust_domain = $1",
                    &[&trust_domain],
                )
                .await
                .map_err(pg_err)?;
            Ok(match row {
                Some(r) => (
                    Some(r.get::<_, String>(0).into_bytes()),
                    u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                ),
                None => (None, 0),
            })
        })
    }

    fn put_authorities(
        &self,
        trust_domain: &str,
        body: Vec<u8>,
        sequence: u64,
    ) -> Result<(), StoreError> {
        let trust_domain = trust_domain.to_owned();
        let sequence = i64::try_from(sequence)
            .map_err(|_| StoreError::Db("store: bundle sequence out of range".into()))?;
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO authorities (trust_domain, records, sequence)
                     VALUES ($1, $2::text::json, $3)
                     ON CONFLICT (trust_domain) DO UPDATE
                     SET records = EXCLUDED.records, sequence = EXCLUDED.sequence",
                    &[&trust_domain, &text(&body)?, &sequence],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }
}

/// The columns of an intermediate request, in [`request_row`]'s order.
const REQUEST_COLUMNS: &str =
    "SELECT id, replica, band, csr, key_sha256, certificate, refused, trust_domain
     FROM intermediate_requests";

/// The rows that read as requests; one unreadable row must not stall every other
/// replica's request (it is logged and skipped).
fn readable_requests(rows: &[tokio_postgres::Row]) -> Vec<super::IntermediateRequest> {
    rows.iter()
        .filter_map(|row| {
            request_row(row)
                .map_err(|e| tracing::warn!(error = %e, "skipping an intermediate request"))
                .ok()
        })
        .collect()
}

fn request_row(row: &tokio_postgres::Row) -> Result<super::IntermediateRequest, StoreError> {
    let band: String = row.get(2);
    let band = band.parse().map_err(|_| StoreError::Corrupt {
        table: "intermediate_requests",
        reason: format!("unknown band {band:?}"),
    })?;
    // NULL in rows posted before schema 6 (see MIGRATIONS): the reader takes the
    // deployment's trust domain of the band.
    let trust_domain = row
        .get::<_, Option<String>>(7)
        .map(|name| {
            spiffe::TrustDomain::new(&name).map_err(|_| StoreError::Corrupt {
                table: "intermediate_requests",
                reason: format!(
                    "not a trust domain: {:?}",
                    name.chars().take(80).collect::<String>()
                ),
            })
        })
        .transpose()?;
    Ok(super::IntermediateRequest {
        id: row.get(0),
        request: super::NewIntermediateRequest {
            replica: row.get(1),
            trust_domain,
            band,
            csr: row.get(3),
            key_sha256: row.get(4),
        },
        certificate: row.get(5),
        refused: row.get(6),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_url_shows_where_it_points_and_never_its_password() {
        let url: PostgresUrl = "postgres://writ:hunter2@db.internal:5433/writ"
            .parse()
            .unwrap();
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("db.internal") && shown.contains("writ"),
                "{shown}"
            );
        }
        let socket: PostgresUrl = "postgresql://writ@/writ?host=/run/postgresql"
            .parse()
            .unwrap();
        assert!(socket.to_string().contains("/run/postgresql"), "{socket}");
    }

    #[test]
    fn a_root_cert_makes_tls_required_and_is_taken_out_of_the_url() {
        let url: PostgresUrl = "postgres://writ@db.internal/writ?sslrootcert=%2Fetc%2Fwrit%2Fdb-ca.pem&application_name=w"
            .parse()
            .unwrap();
        assert_eq!(
            url.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/writ/db-ca.pem"))
        );
        assert_eq!(url.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(url.config.get_application_name(), Some("w"));
        let plain: PostgresUrl = "postgres://writ@db.internal/writ?sslmode=prefer"
            .parse()
            .unwrap();
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        for bad in [
            "postgres://writ@db/writ?sslrootcert=relative.pem",
            "postgres://writ@db/writ?sslrootcert=%ZZ",
            "postgres://writ@db/writ?sslrootcert=/ca.pem&sslmode=disable",
        ] {
            assert!(bad.parse::<PostgresUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unreadable_or_empty_root_cert_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let url: PostgresUrl = format!(
                "postgres://writ@db.invalid/writ?sslrootcert={}",
                path.display()
            )
            .parse()
            .unwrap();
            let e = client_tls(url.ca_file.as_deref().unwrap()).unwrap_err();
            assert!(e.to_string().contains("sslrootcert"), "{e}");
        }
    }

    #[test]
    fn a_url_that_asks_for_tls_without_a_ca_or_names_no_host_is_refused() {
        let e = "postgres://writ@db/writ?sslmode=require"
            .parse::<PostgresUrl>()
            .unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = "postgres://:hunter2@/writ"
            .parse::<PostgresUrl>()
            .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn schema_versions_count_the_migrations() {
        assert_eq!(SCHEMA_VERSION, 8);
        // Every table the store uses is created by some migration.
        let all = MIGRATIONS.join("\n");
        for table in Table::ALL {
            assert!(
                all.contains(&format!("CREATE TABLE {} (", table.name())),
                "{}",
                table.name()
            );
        }
    }
}
