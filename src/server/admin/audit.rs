//! Admin RPCs for the audit log (docs/architecture.md, "Audit"): read records as stored (so
//! a client can recompute the tree itself, or check each one's inclusion proof), follow
//! new ones, and fetch the latest signed checkpoint.
//!
//! One log holds every tenant's records; a call reads only those of the tenant it acts in
//! ([`crate::audit::visible_to`]). A reader who does not see every record proves what it
//! sees is in the signed log by the inclusion proofs `proof_size` asks for.

use super::AdminService;
use super::call::name_arg;
use crate::audit::{AuditError, AuditLog, Record, visible_to};
use crate::policy::DEFAULT_TENANT;
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use crate::server::Issuer;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The stream of [`pb::AuditRecord`]s.
pub type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

/// Records read per store transaction.
const PAGE: usize = 512;

/// Which records a reader is sent.
#[derive(Clone, Debug)]
struct Filter {
    /// The tenant the call acts in.
    tenant: String,
    /// Only this incident's, if not empty.
    incident: String,
}

impl Filter {
    /// Whether the record stored as `bytes` is sent. A record that does not parse has no
    /// tenant it could be shown to but the deployment's: verification there names it.
    fn admits(&self, bytes: &[u8]) -> bool {
        let Ok(record) = Record::decode(bytes) else {
            return self.tenant == DEFAULT_TENANT && self.incident.is_empty();
        };
        visible_to(&record, &self.tenant)
            && (self.incident.is_empty() || record.incident.as_deref() == Some(&self.incident))
    }
}

/// The log's current signed checkpoint, its verifier keys, and its size, checked as any
/// verifier would: a log whose own checkpoint does not verify under its keys is reported,
/// not served.
fn signed_checkpoint(issuer: &Issuer) -> Result<(Vec<u8>, String, u64), Status> {
    let checkpoint = issuer.audit.checkpoint()?;
    let keys = issuer.audit.verifier_keys()?;
    let size = crate::audit::note::open_checkpoint(&checkpoint, &keys)
        .map_err(|e| {
            tracing::error!(error = %e, "the audit log's checkpoint does not verify");
            Status::internal("the audit log's checkpoint does not verify; see the server log")
        })?
        .size;
    Ok((checkpoint, keys, size))
}

impl AdminService {
    pub(super) async fn read_audit_rpc(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        let tenant = self.authorize(&request, Operation::ReadAudit)?;
        let body = request.into_inner();
        if !body.incident.is_empty() {
            name_arg("incident", &body.incident)?;
        }
        let filter = Filter {
            tenant,
            incident: body.incident,
        };
        let issuer = Arc::clone(&self.issuer);
        let (proof_size, last) = (body.proof_size, body.last);
        if proof_size > 0 && body.follow {
            return Err(Status::invalid_argument(
                "inclusion proofs are at one log size: they cannot follow new records",
            ));
        }
        let seek = filter.clone();
        let (end, from) = tokio::task::spawn_blocking(move || {
            let end = match proof_size {
                0 => None,
                n => {
                    let (_, _, signed) = signed_checkpoint(&issuer)?;
                    if n > signed || n > issuer.audit.tree_size()? {
                        return Err(Status::invalid_argument(format!(
                            "no signed checkpoint of {n} records to prove against: ask at the size of the checkpoint GetAuditCheckpoint returns (now {signed})"
                        )));
                    }
                    Some(n)
                }
            };
            let from = match last {
                0 => body.from,
                n => {
                    let end = end.unwrap_or_else(|| issuer.audit.size());
                    start_of_last(&issuer.audit, &seek, n, end)?
                }
            };
            Ok::<_, Status>((end, from))
        })
        .await
        .map_err(crate::server::status::internal)??;
        let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
        let log = Arc::clone(&self.issuer.audit);
        tokio::spawn(pump(log, from, end, filter, body.follow, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(super) async fn get_audit_checkpoint_rpc(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        // One checkpoint for the whole log, whichever tenant asks: it names no record,
        // only the tree's size and root (docs/architecture.md, "Audit").
        let (checkpoint, keys, size) = self
            .call(
                request,
                Operation::ReadAudit,
                |issuer, _, _| signed_checkpoint(issuer),
                // A read: nothing to log.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::AuditCheckpoint {
            checkpoint,
            verifier_key: keys,
            size,
            origin: self.issuer.audit.origin().to_owned(),
        }))
    }
}

/// Where the last `n` records `filter` admits before `end` begin (0 if fewer): the log is
/// read backwards a page at a time, so a tenant's tail is its own last records, however
/// many of other tenants' came after them.
fn start_of_last(log: &AuditLog, filter: &Filter, n: u64, end: u64) -> Result<u64, AuditError> {
    let mut to = end;
    let mut found = 0u64;
    while to > 0 {
        let from = to.saturating_sub(PAGE as u64);
        let page = log.read(from, (to - from) as usize)?;
        for (index, bytes) in page.iter().rev() {
            if filter.admits(bytes) {
                found += 1;
                if found == n {
                    return Ok(*index);
                }
            }
        }
        to = from;
    }
    Ok(0)
}

/// One page of what a reader is sent: the records `filter` admits in `[from, from +
/// PAGE)` (below `end` if given), each with its inclusion proof at `end`; the index after
/// the last record read; and whether the page was full (more may follow at once).
fn read_page(
    log: &AuditLog,
    from: u64,
    end: Option<u64>,
    filter: &Filter,
) -> Result<(Vec<pb::AuditRecord>, u64, bool), AuditError> {
    let limit = end.map_or(PAGE, |end| {
        usize::try_from(end.saturating_sub(from)).map_or(PAGE, |left| left.min(PAGE))
    });
    if limit == 0 {
        return Ok((Vec::new(), from, false));
    }
    let page = log.read(from, limit)?;
    let full = page.len() == limit && end.is_none_or(|end| from + (limit as u64) < end);
    let next = page.last().map_or(from, |(index, _)| index + 1);
    let mut out = Vec::new();
    for (index, bytes) in page {
        if !filter.admits(&bytes) {
            continue;
        }
        let inclusion = match end {
            Some(size) => log
                .prove_inclusion(index, size)?
                .into_iter()
                .map(|hash| hash.0.to_vec())
                .collect(),
            None => Vec::new(),
        };
        out.push(pb::AuditRecord {
            index,
            record: bytes,
            inclusion,
        });
    }
    Ok((out, next, full))
}

/// Sends the records `filter` admits from `from` on (up to `end`, with proofs, if given),
/// then (when following) each new durable one, until the client goes away.
async fn pump(
    log: Arc<AuditLog>,
    mut from: u64,
    end: Option<u64>,
    filter: Filter,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Result<pb::AuditRecord, Status>>,
) {
    let mut durable = log.subscribe();
    loop {
        durable.mark_unchanged();
        let reader = Arc::clone(&log);
        let admits = filter.clone();
        let read = tokio::task::spawn_blocking(move || read_page(&reader, from, end, &admits));
        let (page, next, full) = match read.await {
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
        from = next;
        for item in page {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::Kind;

    fn filter(tenant: &str, incident: &str) -> Filter {
        Filter {
            tenant: tenant.into(),
            incident: incident.into(),
        }
    }

    /// A log of 1500 records: every third is acme's, the rest the default tenant's.
    fn log(dir: &std::path::Path) -> AuditLog {
        let log = AuditLog::open(&dir.join("audit.redb"), dir, "example.org/writ-audit").unwrap();
        for i in 0..1500u64 {
            let tenant = if i % 3 == 0 { "acme" } else { DEFAULT_TENANT };
            let record = Record::new(i as i64, Kind::AdminChange, "incident.open", "op")
                .tenant(tenant)
                .incident(Some(format!("INC-{}", i % 2)));
            log.append(&record).unwrap();
        }
        log
    }

    #[test]
    fn a_tenant_reads_its_own_records_each_proven_in_the_signed_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let cp =
            crate::audit::note::open_checkpoint(&log.checkpoint().unwrap(), log.vkey()).unwrap();
        let acme = filter("acme", "");
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let (page, next, full) = read_page(&log, from, Some(1000), &acme).unwrap();
            seen.extend(page);
            from = next;
            if !full {
                break;
            }
        }
        assert_eq!(from, 1000, "the stream ends at the proof size");
        assert_eq!(seen.len(), 334);
        assert!(seen.iter().all(|r| r.index % 3 == 0));
        // At the signed checkpoint's size, each proof leads to its root.
        let (page, _, _) = read_page(&log, 0, Some(cp.size), &acme).unwrap();
        assert_eq!(page.len(), 171);
        for r in &page {
            let proof: Vec<tlog_tiles::Hash> = r
                .inclusion
                .iter()
                .map(|h| tlog_tiles::Hash(h.as_slice().try_into().unwrap()))
                .collect();
            crate::audit::verify::verify_inclusion(&cp, r.index, &r.record, &proof).unwrap();
        }
        // The default tenant sees the others, none of acme's.
        let (page, _, _) = read_page(&log, 0, None, &filter(DEFAULT_TENANT, "")).unwrap();
        assert_eq!(page.len(), 341);
        assert!(
            page.iter()
                .all(|r| r.index % 3 != 0 && r.inclusion.is_empty())
        );
        // And another tenant nothing.
        let (page, _, _) = read_page(&log, 0, None, &filter("globex", "")).unwrap();
        assert!(page.is_empty());
    }

    #[test]
    fn a_tenants_tail_is_its_own_last_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        // acme's last 5 of 1500: indexes 1485..=1497 step 3.
        assert_eq!(
            start_of_last(&log, &filter("acme", ""), 5, 1500).unwrap(),
            1485
        );
        // Of one incident: acme's records of INC-1 are the odd multiples of 3.
        assert_eq!(
            start_of_last(&log, &filter("acme", "INC-1"), 2, 1500).unwrap(),
            1491
        );
        // More than there are: from the start.
        assert_eq!(
            start_of_last(&log, &filter("acme", ""), 10_000, 1500).unwrap(),
            0
        );
        assert_eq!(
            start_of_last(&log, &filter("globex", ""), 1, 1500).unwrap(),
            0
        );
    }
}
