//! `writ audit tail|checkpoint|verify|export` and `writ incident timeline`.
//!
//! `verify` recomputes the Merkle tree here, from the records' stored bytes, and checks the
//! log's signed checkpoint and a kept one: it trusts the server for nothing but the bytes.
//! A reader who sees only part of the log (a tenant's operators see only that tenant's
//! records) checks instead that each record it sees is in the signed log, by its RFC 6962
//! inclusion proof against the signed checkpoint.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix};
use crate::audit::{Record, VerifyError, verify};
use crate::policy::DEFAULT_TENANT;
use crate::proto::admin as pb;
use clap::Args;
use std::path::PathBuf;

/// Flags of `writ audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep printing records as they are written.
    #[arg(short, long)]
    follow: bool,
    /// How many of the latest records to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: u64,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ audit verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Through the server, the whole log is recomputed when the caller sees every record; otherwise (another tenant's records exist) each record the caller sees is checked against the signed checkpoint by its inclusion proof. --data-dir and --store always recompute the whole log.\n\nExit status: 0 intact; 1 NOT intact (tampering found, and where); 2 could not verify (permission denied, I/O error, server unreachable). The log file is only ever read."
)]
pub struct VerifyArgs {
    /// A checkpoint kept earlier (`writ audit checkpoint > FILE`): the log must still
    /// extend it.
    #[arg(long, value_name = "CHECKPOINT_FILE")]
    since: Option<PathBuf>,
    /// Verify the log file in this data directory at rest (a copy, a backup, or a stopped
    /// server's), instead of asking the server for its records.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Verify the audit log several servers share, read straight from their PostgreSQL
    /// database (`postgres://…`, read only), instead of asking a server.
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    store: Option<String>,
    /// The log's verifier key (`keys/audit.pub`), pinned; default: the server's, or the
    /// data directory's. For a log several servers share, a file with every server's key,
    /// one per line (each server's `keys/audit.pub`).
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only this incident's records.
    #[arg(long)]
    incident: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

async fn read_all(
    admin: &AdminArgs,
    request: pb::ReadAuditRequest,
) -> anyhow::Result<tonic::Streaming<pb::AuditRecord>> {
    let mut client = connect(admin).await?;
    Ok(client
        .read_audit(request)
        .await
        .map_err(rpc_error)?
        .into_inner())
}

/// One record as a JSON line: its index, then its fields.
fn json_line(index: u64, bytes: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(mut fields)) => {
            let mut out = serde_json::Map::new();
            out.insert("index".into(), index.into());
            out.append(&mut fields);
            serde_json::Value::Object(out).to_string()
        }
        _ => serde_json::json!({ "index": index, "malformed": String::from_utf8_lossy(bytes) })
            .to_string(),
    }
}

/// One record as a human line. Records hold what callers sent (titles, actions,
/// evidence, reasons, activity summaries): the line is escaped whole, so no record prints
/// more than one line or rewrites another.
fn human_line(index: u64, bytes: &[u8]) -> String {
    let line = match Record::decode(bytes) {
        Ok(r) => format!(
            "{index:>6}  {}  {:<12} {:<26} {}  {}",
            format_unix(r.time),
            r.kind.as_str(),
            r.action,
            r.actor,
            summary(&r)
        ),
        Err(e) => format!("{index:>6}  (malformed record: {e})"),
    };
    escape(&line)
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let mut stream = read_all(
        &args.admin,
        pb::ReadAuditRequest {
            last: args.lines.max(1),
            follow: args.follow,
            ..Default::default()
        },
    )
    .await?;
    while let Some(item) = stream.message().await.map_err(rpc_error)? {
        if args.admin.json {
            println!("{}", json_line(item.index, &item.record));
        } else {
            println!("{}", human_line(item.index, &item.record));
        }
    }
    Ok(())
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.incident {
        crate::policy::check_name("incident", id)?;
    }
    let mut stream = read_all(
        &args.admin,
        pb::ReadAuditRequest {
            incident: args.incident.unwrap_or_default(),
            ..Default::default()
        },
    )
    .await?;
    while let Some(item) = stream.message().await.map_err(rpc_error)? {
        println!("{}", json_line(item.index, &item.record));
    }
    Ok(())
}

pub async fn checkpoint(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let cp = client
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "origin": cp.origin,
                "size": cp.size,
                "verifier_key": cp.verifier_key,
                "checkpoint": String::from_utf8_lossy(&cp.checkpoint),
            })
        );
    } else {
        // Verbatim, so `writ audit checkpoint > FILE` keeps a verifiable note.
        print!("{}", String::from_utf8_lossy(&cp.checkpoint));
    }
    Ok(())
}

fn read_file(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))?;
    if meta.len() > 1 << 20 {
        anyhow::bail!("{what} {} is too large", path.display());
    }
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))
}

/// A signed-note verifier key file (`keys/audit.pub`).
fn read_key(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&read_file(path, "log key")?)
        .trim()
        .to_owned())
}

/// `writ audit verify`. Exit status, as `cmp` and `diff` report theirs: 0 the log is
/// intact, 1 it is NOT (a finding of tampering, named), 2 it could not be verified
/// (permission denied, an I/O error, the server unreachable): trouble, never reported as
/// tampering.
pub async fn verify_cmd(args: VerifyArgs) -> anyhow::Result<()> {
    let json = args.admin.json;
    let (result, recovered) = match gather(args).await {
        Ok(outcome) => outcome,
        Err(e) => return Err(cannot_verify(format!("{e:#}"))),
    };
    if recovered {
        eprintln!(
            "note: the log was not closed cleanly (its writer was killed, or it was copied while in use): it was recovered in memory to be read; the file was not changed"
        );
    }
    report(result, json)
}

fn cannot_verify(reason: String) -> anyhow::Error {
    super::Exit {
        code: 2,
        message: format!("cannot verify the audit log: {reason}"),
    }
    .into()
}

/// What a verification proved.
enum Outcome {
    /// The whole log, recomputed.
    Whole(crate::audit::Verified),
    /// Each record one tenant sees, proven in the signed log by its inclusion proof.
    Included {
        /// The tenant.
        tenant: String,
        /// Its records proven.
        records: u64,
        /// The signed checkpoint they were proven against.
        checkpoint: crate::audit::note::VerifiedCheckpoint,
    },
}

/// Reads what verification needs and runs it; an error here means it could not run.
async fn gather(args: VerifyArgs) -> anyhow::Result<(Result<Outcome, VerifyError>, bool)> {
    let kept = args
        .since
        .as_deref()
        .map(|p| read_file(p, "checkpoint"))
        .transpose()?;
    let pinned = args.log_key.as_deref().map(read_key).transpose()?;
    if let Some(dir) = &args.data_dir {
        let vkey = match pinned {
            Some(k) => k,
            None => read_key(&dir.join("keys").join("audit.pub"))?,
        };
        return Ok(
            match crate::audit::verify_file_at_rest(&dir.join("audit.redb"), &vkey, kept.as_deref())
            {
                Ok((verified, recovered)) => (Ok(Outcome::Whole(verified)), recovered),
                Err(e) => (Err(e), false),
            },
        );
    }
    if let Some(url) = &args.store {
        let url: crate::store::PostgresUrl =
            url.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        let kept = kept.clone();
        let result = tokio::task::spawn_blocking(move || {
            let log = crate::store::Store::shared_log_to_read(&url)
                .map_err(|e| anyhow::anyhow!("opening the shared audit log: {e}"))?;
            Ok::<_, anyhow::Error>(
                crate::audit::verify_shared(log.as_ref(), pinned.as_deref(), kept.as_deref())
                    .map(Outcome::Whole),
            )
        })
        .await??;
        return Ok((result, false));
    }
    let mut client = connect(&args.admin).await?;
    let cp = client
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let vkey = pinned.unwrap_or(cp.verifier_key);
    let tenant = args
        .admin
        .tenant
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    // Each record with its inclusion proof at the checkpoint's size (a checkpoint of an
    // empty log covers no record: nothing to read).
    let mut records = Vec::new();
    if cp.size > 0 {
        let mut stream = client
            .read_audit(pb::ReadAuditRequest {
                proof_size: cp.size,
                ..Default::default()
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        while let Some(item) = stream.message().await.map_err(rpc_error)? {
            records.push(item);
        }
    }
    // The default tenant of a deployment without other tenants sees every record, and
    // recomputes the whole log as it always did.
    let every = tenant == DEFAULT_TENANT
        && records.iter().enumerate().all(|(i, r)| r.index == i as u64)
        && records.len() as u64 == cp.size;
    if every {
        let records = records.into_iter().map(|r| Ok((r.index, r.record)));
        let result = verify::verify(
            records,
            &verify::Inputs {
                vkey: &vkey,
                signed: Some(&cp.checkpoint),
                kept: kept.as_deref(),
                stored_leaf: None,
            },
        );
        return Ok((result.map(Outcome::Whole), false));
    }
    if kept.is_some() {
        anyhow::bail!(
            "--since needs every record of the log, and tenant {tenant} sees only its own: verify the log at rest (--data-dir or --store) to check a kept checkpoint"
        );
    }
    let proven = verify_included(&cp.checkpoint, &vkey, &records);
    Ok((
        proven.map(|checkpoint| Outcome::Included {
            tenant,
            records: records.len() as u64,
            checkpoint,
        }),
        false,
    ))
}

/// Checks the signed checkpoint `note` under `vkey`, then each of `records` by its
/// inclusion proof against it ([`verify::verify_inclusion`]).
fn verify_included(
    note: &[u8],
    vkey: &str,
    records: &[pb::AuditRecord],
) -> Result<crate::audit::note::VerifiedCheckpoint, VerifyError> {
    let checkpoint = crate::audit::note::open_checkpoint(note, vkey).map_err(|reason| {
        VerifyError::Checkpoint {
            which: "signed",
            reason,
        }
    })?;
    for r in records {
        // A hash of the wrong length cannot be on the path to the root.
        let proof: Option<Vec<tlog_tiles::Hash>> = r
            .inclusion
            .iter()
            .map(|h| {
                <[u8; 32]>::try_from(h.as_slice())
                    .ok()
                    .map(tlog_tiles::Hash)
            })
            .collect();
        let proof = proof.ok_or(VerifyError::NotIncluded {
            index: r.index,
            size: checkpoint.size,
        })?;
        verify::verify_inclusion(&checkpoint, r.index, &r.record, &proof)?;
    }
    Ok(checkpoint)
}

fn report(result: Result<Outcome, VerifyError>, json: bool) -> anyhow::Result<()> {
    use base64::Engine;
    let encode = |h: &tlog_tiles::Hash| base64::engine::general_purpose::STANDARD.encode(h.0);
    match result {
        Ok(Outcome::Included {
            tenant,
            records,
            checkpoint,
        }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "intact": true,
                        "tenant": tenant,
                        "records": records,
                        "proven": "inclusion",
                        "size": checkpoint.size,
                        "root": encode(&checkpoint.root),
                        "signed_checkpoint_size": checkpoint.size,
                    })
                );
            } else {
                println!(
                    "{records} records of tenant {}, each proven included in the signed log of size {}",
                    escape(&tenant),
                    checkpoint.size
                );
                println!(
                    "  the log's signed checkpoint ({} records, root {}) verifies",
                    checkpoint.size,
                    encode(&checkpoint.root)
                );
            }
            Ok(())
        }
        Ok(Outcome::Whole(v)) => {
            let root = encode(&v.root);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "intact": true,
                        "size": v.size,
                        "root": root,
                        "signed_checkpoint_size": v.signed.as_ref().map(|c| c.size),
                        "kept_checkpoint_size": v.kept.as_ref().map(|c| c.size),
                    })
                );
            } else {
                println!("audit log intact: {} records, root {root}", v.size);
                if let Some(c) = &v.signed {
                    println!(
                        "  the log's signed checkpoint ({} records) verifies",
                        c.size
                    );
                }
                if let Some(c) = &v.kept {
                    println!(
                        "  consistent with the kept checkpoint of {} ({} records)",
                        escape(&c.origin),
                        c.size
                    );
                }
            }
            Ok(())
        }
        Err(e) if e.is_tampering() => anyhow::bail!("audit log NOT intact: {e}"),
        Err(e) => Err(cannot_verify(e.to_string())),
    }
}

/// `writ incident timeline ID`: the decision chain of one incident, in log order.
pub async fn timeline(id: String, admin: AdminArgs) -> anyhow::Result<()> {
    crate::policy::check_name("incident", &id)?;
    let mut stream = read_all(
        &admin,
        pb::ReadAuditRequest {
            incident: id.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut any = false;
    while let Some(item) = stream.message().await.map_err(rpc_error)? {
        any = true;
        if admin.json {
            println!("{}", json_line(item.index, &item.record));
            continue;
        }
        // Two lines per record, each escaped: what a caller wrote cannot add a third.
        match Record::decode(&item.record) {
            Ok(r) => println!(
                "{}  [{:>5}]  {:<22} {}\n{:>36}{}",
                format_unix(r.time),
                item.index,
                step(&r),
                escape(&r.actor),
                "",
                escape(&summary(&r))
            ),
            Err(e) => println!(
                "[{}] malformed record: {}",
                item.index,
                escape(&e.to_string())
            ),
        }
    }
    if !any {
        anyhow::bail!("no audit records for incident {id:?}");
    }
    Ok(())
}

/// Where a record sits in the decision chain.
fn step(r: &Record) -> &'static str {
    let a = r.action.as_str();
    match a {
        "incident.open" => "opened",
        "incident.extend" => "extended",
        "incident.close" => "closed",
        "incident.severity" => "severity changed",
        "source.refused" | "source.malformed" | "source.unauthenticated" => "webhook refused",
        "source.duplicate" => "webhook repeated",
        "source.tombstone" => "ended at the source",
        "source.ignored" => "webhook (no change)",
        "expire" => "expired",
        "grant.request" => "plan proposed",
        "grant.approve" => "approved",
        "grant.deny" => "denied",
        "grant.revoke" | "svid.revoke" | "grant.withdraw_approvals" => "revoked",
        "playbook.activate" => "playbook activated",
        "workload.attest" => "workload attested",
        "activity.evidence" => "evidence",
        "activity.prompt" => "prompt",
        "activity.tool_call" => "action (tool call)",
        "activity.proposed_fix" => "fix proposed",
        _ if a.starts_with("svid.issue") => "identity issued",
        _ if a.starts_with("svid.deny") => "identity refused",
        _ => "event",
    }
}

/// The few fields of a record's detail that say what happened.
fn summary(r: &Record) -> String {
    let d = &r.detail;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let mut parts: Vec<String> = Vec::new();
    if let Some(id) = &r.spiffe_id {
        parts.push(id.clone());
    }
    if let Some(serial) = &r.serial {
        parts.push(format!("serial {serial}"));
    }
    if let Some(g) = d
        .get("grants")
        .and_then(|g| g.as_array())
        .and_then(|g| g.first())
    {
        let mut line = format!(
            "grant {} {}",
            s(&g["id"]).unwrap_or_default(),
            s(&g["state"]).unwrap_or_default()
        );
        if let Some(action) = s(&g["action"]) {
            line.push_str(&format!(": {action:?}"));
        }
        if let Some(digest) = s(&g["plan_digest"]) {
            line.push_str(&format!(" plan sha256 {digest}"));
        }
        if let Some(ev) = g["evidence"].as_array().filter(|e| !e.is_empty()) {
            let ev: Vec<String> = ev.iter().filter_map(s).collect();
            line.push_str(&format!(" evidence [{}]", ev.join(", ")));
        }
        parts.push(line);
    }
    if let Some(i) = d
        .get("incidents")
        .and_then(|i| i.as_array())
        .and_then(|i| i.first())
    {
        parts.push(format!(
            "incident {} {} {}",
            s(&i["id"]).unwrap_or_default(),
            s(&i["severity"]).unwrap_or_default(),
            s(&i["state"]).unwrap_or_default()
        ));
    }
    if let Some(selectors) = d.get("selectors").and_then(|v| v.as_array()) {
        let selectors: Vec<String> = selectors.iter().filter_map(s).collect();
        parts.push(selectors.join(" "));
    }
    // A webhook delivery: which source incident, and what writ decided.
    if let Some(src) = d.get("source").filter(|v| v.is_object()) {
        let mut line = format!(
            "{} incident {}",
            s(&src["name"]).unwrap_or_default(),
            s(&src["incident_id"]).unwrap_or_default()
        );
        if let Some(decision) = s(&src["decision"]) {
            line.push_str(&format!(": {decision}"));
        }
        if let Some(url) = s(&src["url"]) {
            line.push_str(&format!(" <{url}>"));
        }
        parts.push(line);
    }
    for key in ["reason", "tool", "uri", "digest", "summary", "audience"] {
        if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
            parts.push(format!(
                "{key}={}",
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            ));
        }
    }
    parts.join("  ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Kind};

    #[test]
    fn a_tenants_records_verify_by_their_proofs_and_a_changed_one_is_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(
            &dir.path().join("audit.redb"),
            dir.path(),
            "example.org/writ-audit",
        )
        .unwrap();
        for i in 0..9 {
            let tenant = if i % 3 == 0 { "acme" } else { DEFAULT_TENANT };
            let r = Record::new(i, Kind::AdminChange, "incident.open", "op").tenant(tenant);
            log.append(&r).unwrap();
        }
        let note = log.checkpoint().unwrap();
        // What the server streams to acme: its records, each with its proof at 9.
        let mut seen: Vec<pb::AuditRecord> = log
            .read(0, 9)
            .unwrap()
            .into_iter()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(index, record)| pb::AuditRecord {
                index,
                record,
                inclusion: log
                    .prove_inclusion(index, 9)
                    .unwrap()
                    .iter()
                    .map(|h| h.0.to_vec())
                    .collect(),
            })
            .collect();
        let proven = verify_included(&note, log.vkey(), &seen).unwrap();
        assert_eq!(proven.size, 9);

        // Under another key the checkpoint itself is refused.
        let other = tempfile::tempdir().unwrap();
        let forger =
            crate::audit::note::LogKey::open_or_create(other.path(), "example.org/writ-audit")
                .unwrap();
        assert!(matches!(
            verify_included(&note, forger.vkey(), &seen),
            Err(VerifyError::Checkpoint { .. })
        ));
        // A record shown with other bytes, or a proof hash cut short: tampering (exit 1).
        seen[1].record = Record::new(3, Kind::AdminChange, "incident.open", "mallory")
            .tenant("acme")
            .encode()
            .unwrap();
        let refused = verify_included(&note, log.vkey(), &seen).unwrap_err();
        assert_eq!(refused, VerifyError::NotIncluded { index: 3, size: 9 });
        assert!(report(Err(refused), false).is_err_and(|e| e.to_string().contains("NOT intact")));
        seen.truncate(1);
        seen[0].inclusion[0].pop();
        assert_eq!(
            verify_included(&note, log.vkey(), &seen).unwrap_err(),
            VerifyError::NotIncluded { index: 0, size: 9 }
        );
    }
}
