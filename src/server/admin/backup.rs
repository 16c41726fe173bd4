//! The `Backup` admin RPC (docs/operations.md, "Back up and restore"): a snapshot of this
//! server's data directory, encrypted ([`crate::backup`]), streamed to the caller.
//!
//! Consistency: with every CA's rotation held off, one read transaction of the store is
//! begun and the key directory is read into memory, so the authorities the store names
//! and the key files are of one instant; then the audit log's committed prefix is copied
//! from a read transaction of its own, begun after the store's. A change's audit record
//! is durable before its rows are written, so every row in the copy has its record in
//! the copied log: the archive is a state the server could have crashed in, which it
//! starts from.
//!
//! Must never: send a byte of a key in clear, serve a backup over the remote (mTLS)
//! admin listener, or report a backup whose audit record is not durable.

use super::AdminService;
use crate::audit::{Kind, Record};
use crate::backup::{AUDIT_FILE, Collected, Encryption, KEY_DIR, Manifest, STORE_FILE};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use crate::server::Issuer;
use crate::server::status::internal;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The stream of [`pb::BackupChunk`]s.
pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Bytes per message.
const CHUNK: usize = 64 * 1024;

/// Where the snapshot's copies of the store and the audit log are written, in the data
/// directory (same filesystem, owner-only); removed after each backup, and before the
/// next one if a crash left it.
const WORK_DIR: &str = ".backup-work";

/// One backup at a time on a server: each takes a copy of the store and the log.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl AdminService {
    pub(super) async fn backup_rpc(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        if request
            .extensions()
            .get::<crate::server::tls::AdminPeer>()
            .is_some()
        {
            tracing::warn!("backup refused: asked over the remote admin listener");
            return Err(Status::permission_denied(
                "backups are taken on the local admin socket only (keys never leave this host, even encrypted): run writ backup on the server's host",
            ));
        }
        let caller = self.caller(&request, Operation::Backup)?;
        let body = request.into_inner();
        let passphrase = (!body.passphrase.is_empty()).then_some(body.passphrase);
        let encryption = Encryption::parse(passphrase, &body.recipients)?;
        if self.issuer.store.shared() {
            return Err(Status::failed_precondition(
                "this server's store is PostgreSQL, shared with other servers: back up the database with pg_dump, and each server's keys directory as a file backup; see docs/operations.md, \"Back up and restore\"",
            ));
        }
        let running = RUNNING.try_lock().map_err(|_| {
            Status::failed_precondition("a backup is already running on this server")
        })?;
        let issuer = Arc::clone(&self.issuer);
        let (collected, manifest, work) = tokio::task::spawn_blocking(move || snapshot(&issuer))
            .await
            .map_err(internal)??;
        let (tx, rx) = mpsc::channel(4);
        let issuer = Arc::clone(&self.issuer);
        let by = caller.name;
        tokio::task::spawn_blocking(move || {
            let _running = running;
            let _work = work;
            if let Err(status) = send(&issuer, &by, &collected, &manifest, &encryption, &tx) {
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The working directory of one backup, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> Result<Self, Status> {
        // A crash during an earlier backup may have left it: nothing in it is kept.
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(internal)?;
        }
        crate::ca::create_private_dir(&path)?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(error = %e, dir = %self.0.display(), "could not remove a backup's working directory");
        }
    }
}

/// Takes the snapshot (see the module's doc for the order): the entries and the
/// manifest, and the working directory holding the copies.
fn snapshot(issuer: &Issuer) -> Result<(Collected, Manifest, WorkDir), Status> {
    let data_dir = &issuer.config.data_dir;
    let work = WorkDir::create(data_dir.join(WORK_DIR))?;
    let (store, keys) = issuer.cas.with_rotations_held(|| {
        let store = issuer.store.snapshot()?;
        let mut keys = Collected::default();
        keys.add_tree(KEY_DIR, &data_dir.join(KEY_DIR))?;
        Ok::<_, Status>((store, keys))
    })??;
    let store = store.ok_or_else(|| internal("the store has no snapshot"))?;
    let store_copy = work.0.join(STORE_FILE);
    store.write_to(&store_copy)?;
    drop(store);
    let audit_copy = work.0.join(AUDIT_FILE);
    let audit_records = issuer
        .audit
        .snapshot_to(&audit_copy)?
        .ok_or_else(|| internal("the audit log has no snapshot"))?;
    let mut collected = Collected::default();
    collected.add_file(STORE_FILE, store_copy)?;
    collected.add_file(AUDIT_FILE, audit_copy)?;
    collected.append(keys);
    let root_mode = std::fs::metadata(data_dir)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .map_err(internal)?;
    let manifest = collected.manifest(
        issuer.cas.now(),
        issuer.cas.base().as_ref(),
        audit_records,
        root_mode,
    );
    manifest.check()?;
    Ok((collected, manifest, work))
}

/// Encrypts the archive into messages on `tx`, then records the backup in the audit log
/// and sends the last message with the archive's digest.
fn send(
    issuer: &Issuer,
    by: &str,
    collected: &Collected,
    manifest: &Manifest,
    encryption: &Encryption,
    tx: &mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Result<(), Status> {
    let out = Chunks {
        tx,
        buf: Vec::with_capacity(CHUNK),
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        size: 0,
    };
    let mut out = collected.write(manifest, encryption, out)?;
    out.send().map_err(internal)?;
    let sha256 = crate::hex::lower(out.digest.clone().finish().as_ref());
    let size = out.size;
    let how = match encryption {
        Encryption::Passphrase(_) => "passphrase",
        Encryption::Recipients(_) => "recipients",
    };
    let record = Record::new(issuer.cas.now(), Kind::AdminChange, "backup.created", by).detail(
        serde_json::json!({
            "sha256": sha256,
            "size": size,
            "audit_records": manifest.audit_records,
            "entries": manifest.entries.len(),
            "encrypted_to": how,
        }),
    );
    issuer.audit.append(&record)?;
    tracing::info!(by, %sha256, size, audit_records = manifest.audit_records, "backup taken");
    tx.blocking_send(Ok(pb::BackupChunk {
        data: Vec::new(),
        sha256,
        size,
        audit_records: manifest.audit_records,
    }))
    .map_err(|_| Status::cancelled("the client went away"))
}

/// The archive's bytes as messages, hashed as they go.
struct Chunks<'a> {
    tx: &'a mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
    digest: ring::digest::Context,
    size: u64,
}

impl Chunks<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(pb::BackupChunk {
                data,
                ..Default::default()
            }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })
    }
}

impl Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.digest.update(data);
        self.size += data.len() as u64;
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
