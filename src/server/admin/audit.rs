//! Admin RPCs for the audit log (docs/architecture.md, "Audit"): read records as stored (so
//! a client can recompute the tree itself), follow new ones, and fetch the latest signed
//! checkpoint.

use super::AdminService;
use super::call::name_arg;
use crate::audit::{AuditLog, Record};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The stream of [`pb::AuditRecord`]s.
pub type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

/// Records read per store transaction.
const PAGE: usize = 512;

impl AdminService {
    pub(super) async fn read_audit_rpc(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        self.authorize(&request, Operation::ReadAudit)?;
        let body = request.into_inner();
        if !body.incident.is_empty() {
            name_arg("incident", &body.incident)?;
        }
        let log = Arc::clone(&self.issuer.audit);
        let from = match body.last {
            0 => body.from,
            n => log.size().saturating_sub(n),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
        tokio::spawn(pump(log, from, body.incident, body.follow, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(super) async fn get_audit_checkpoint_rpc(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        let (checkpoint, keys) = self
            .call(
                request,
                Operation::ReadAudit,
                |issuer, _, _| Ok((issuer.audit.checkpoint()?, issuer.audit.verifier_keys()?)),
                // A read: nothing to log.
                |_, _| (),
            )
            .await?;
        // Parsed and checked as any verifier would; a log whose own checkpoint does not
        // verify under its keys is reported, not served.
        let size = crate::audit::note::open_checkpoint(&checkpoint, &keys)
            .map_err(|e| {
                tracing::error!(error = %e, "the audit log's checkpoint does not verify");
                Status::internal("the audit log's checkpoint does not verify; see the server log")
            })?
            .size;
        Ok(Response::new(pb::AuditCheckpoint {
            checkpoint,
            verifier_key: keys,
            size,
            origin: self.issuer.audit.origin().to_owned(),
        }))
    }
}

/// Sends records from `from` on, then (when following) each new durable one, until the
/// client goes away.
async fn pump(
    log: Arc<AuditLog>,
    mut from: u64,
    incident: String,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Result<pb::AuditRecord, Status>>,
) {
    let mut durable = log.subscribe();
    loop {
        durable.mark_unchanged();
        let reader = Arc::clone(&log);
        let page = match tokio::task::spawn_blocking(move || reader.read(from, PAGE)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(crate::server::status::internal(e))).await;
                return;
            }
        };
        let full = page.len() == PAGE;
        for (index, bytes) in page {
            from = index + 1;
            if !incident.is_empty()
                && Record::decode(&bytes)
                    .ok()
                    .and_then(|r| r.incident)
                    .as_deref()
                    != Some(incident.as_str())
            {
                continue;
            }
            let item = pb::AuditRecord {
                index,
                record: bytes,
            };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        if !follow {
            return;
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}
