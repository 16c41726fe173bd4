//! `writ grant request | approve | deny | list | show | revoke` (docs/architecture.md,
//! "Policy objects" and "The CLI").
//!
//! What an approver signs is the plan's SHA-256. `grant show` prints the plan and the
//! evidence in full; `grant approve` without `--digest` sends the digest of the plan it
//! fetched (the one `grant show` displays) and echoes what was approved to stderr once the
//! server accepts, so that a refused approval is one error line. Actions, targets and
//! evidence come from agents: in human output every field is escaped onto its own line,
//! and the plan is fenced with its digest (`output::plan_block`), so nothing an agent
//! wrote can hide, rewrite or forge a line on the approver's terminal.
//!
//! The server is the only judge of grants; this file only reads the plan file and checks
//! the shape of a typed digest.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix, list_or, plan_block, plan_preview, print_table};
use crate::policy::grant::MAX_PLAN_LEN;
use crate::proto::admin as pb;
use crate::ttl::Ttl;
use anyhow::Context;
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lines of the plan `grant approve` echoes; `grant show` prints all of them.
const PREVIEW_LINES: usize = 10;

/// Flags of `writ grant request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The incident the remediation is for.
    #[arg(long)]
    incident: String,
    /// The agent (profile name) that will hold the remediation identity.
    #[arg(long)]
    agent: String,
    /// What will be done, in a line.
    #[arg(long)]
    action: String,
    /// The plan: a file with the proposed fix, text or diff (`-` reads stdin). Its SHA-256
    /// is what approvers approve.
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// What it will be done to (repeatable).
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// A reference to the evidence behind the plan: URI, log query, ticket (repeatable).
    #[arg(long = "evidence", value_name = "REF")]
    evidence: Vec<String>,
    /// A scope the remediation identity will carry (repeatable). Deployment, IAM and
    /// secrets scopes must be named by the incident.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// How long the grant is active once approved [default: the server's, 10m].
    #[arg(long)]
    window: Option<Ttl>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ grant approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The grant id.
    grant: String,
    /// The plan's SHA-256 (hex) as you read it elsewhere. Without it, the grant is fetched,
    /// the fetched plan's digest is approved, and what you approved is echoed to stderr.
    #[arg(long, value_name = "SHA256")]
    digest: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ grant deny` and `writ grant revoke`.
#[derive(Debug, Args)]
pub struct EndArgs {
    /// The grant id.
    grant: String,
    /// Why (recorded with the grant and in the audit log).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ grant list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this incident's grants.
    #[arg(long)]
    incident: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ grant show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The grant id.
    grant: String,
    #[command(flatten)]
    admin: AdminArgs,
}

fn returned(grant: Option<pb::Grant>) -> anyhow::Result<pb::Grant> {
    grant.ok_or_else(|| anyhow::anyhow!("the server returned no grant"))
}

pub async fn request(args: RequestArgs) -> anyhow::Result<()> {
    // Read the plan before connecting: a missing file changes nothing anywhere.
    let plan = read_plan(&args.plan)?;
    let mut client = connect(&args.admin).await?;
    let grant = client
        .request_grant(pb::RequestGrantRequest {
            incident: args.incident,
            agent: args.agent,
            action: args.action,
            targets: args.targets,
            evidence: args.evidence,
            plan,
            scopes: args.scopes,
            window_seconds: args.window.map(Ttl::secs),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .grant;
    let grant = returned(grant)?;
    if args.admin.json {
        println!("{}", to_json(&grant));
    } else {
        // The id alone on stdout, so `G=$(writ grant request …)` works; the rest is a hint.
        let id = escape(&grant.id);
        println!("{id}");
        eprintln!(
            "hint: grant {id} for {} on {} is pending; it needs {} approval(s) of plan sha256 {}: `writ grant show {id}`, then `writ grant approve {id}`",
            escape(&grant.agent),
            escape(&grant.incident),
            grant.quorum,
            escape(&grant.plan_digest),
        );
    }
    Ok(())
}

pub async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let given = args.digest.as_deref().map(parse_digest).transpose()?;
    let mut client = connect(&args.admin).await?;
    let (digest, read) = match given {
        Some(digest) => (digest, false),
        None => {
            let fetched = client
                .get_grant(pb::GetGrantRequest {
                    id: args.grant.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .grant;
            (returned(fetched)?.plan_digest, true)
        }
    };
    let grant = client
        .approve_grant(pb::ApproveGrantRequest {
            id: args.grant,
            plan_digest: digest,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .grant;
    let grant = returned(grant)?;
    // The echo follows the server's acceptance, so that a refusal stays one error line.
    // It shows the grant the server approved, whose digest is the one fetched and sent.
    if read {
        print_approved(&grant);
    }
    if args.admin.json {
        println!("{}", to_json(&grant));
    } else if grant.state == "active" {
        println!(
            "grant {} is active until {}: agent {} may hold {}",
            escape(&grant.id),
            grant.expires_at.map_or_else(|| "-".into(), format_unix),
            escape(&grant.agent),
            escape(&grant.spiffe_id)
        );
    } else {
        println!(
            "approved grant {}: {} of {} approvals ({}); still {}",
            escape(&grant.id),
            grant.approvals.len(),
            grant.quorum,
            approvers(&grant),
            escape(&grant.state)
        );
    }
    Ok(())
}

pub async fn deny(args: EndArgs) -> anyhow::Result<()> {
    end(args, false).await
}

pub async fn revoke(args: EndArgs) -> anyhow::Result<()> {
    end(args, true).await
}

async fn end(args: EndArgs, revoke: bool) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let body = pb::EndGrantRequest {
        id: args.grant,
        reason: args.reason.unwrap_or_default(),
    };
    let (response, verb) = if revoke {
        (client.revoke_grant(body).await, "revoked")
    } else {
        (client.deny_grant(body).await, "denied")
    };
    let ended = response.map_err(rpc_error)?.into_inner();
    super::output::warn_unconfirmed(&ended.unconfirmed_replicas);
    let grant = returned(ended.grant)?;
    if args.admin.json {
        println!("{}", to_json(&grant));
    } else {
        println!(
            "{verb} grant {} at {} by {}: {}",
            escape(&grant.id),
            grant.ended_at.map_or_else(|| "-".into(), format_unix),
            escape(&grant.ended_by),
            escape(&grant.end_reason)
        );
    }
    Ok(())
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let grants = client
        .list_grants(pb::ListGrantsRequest {
            incident: args.incident.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .grants;
    if args.admin.json {
        for grant in &grants {
            println!("{}", to_json(grant));
        }
        return Ok(());
    }
    if grants.is_empty() {
        println!("no grants");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = grants
        .iter()
        .map(|g| {
            [
                g.id.clone(),
                g.state.clone(),
                g.incident.clone(),
                g.agent.clone(),
                format!("{}/{}", g.approvals.len(), g.quorum),
                format_unix(g.requested_at),
                g.action.clone(),
            ]
        })
        .collect();
    print_table(
        [
            "ID",
            "STATE",
            "INCIDENT",
            "AGENT",
            "APPROVALS",
            "REQUESTED",
            "ACTION",
        ],
        &rows,
    );
    Ok(())
}

pub async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let grant = client
        .get_grant(pb::GetGrantRequest { id: args.grant })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .grant;
    let grant = returned(grant)?;
    if args.admin.json {
        println!("{}", to_json(&grant));
    } else {
        print_grant(&grant);
    }
    Ok(())
}

/// Reads the plan from `path` (`-`: stdin): UTF-8 text, 1 byte to [`MAX_PLAN_LEN`].
fn read_plan(path: &Path) -> anyhow::Result<String> {
    let name = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let mut bytes = Vec::new();
    // One byte past the limit tells "too long" from "exactly the limit" without reading
    // an arbitrarily large file.
    let limit = MAX_PLAN_LEN as u64 + 1;
    if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    }
    .with_context(|| format!("reading the plan {name}"))?;
    if bytes.is_empty() {
        anyhow::bail!("the plan {name} is empty");
    }
    if bytes.len() > MAX_PLAN_LEN {
        anyhow::bail!("the plan {name} is larger than {MAX_PLAN_LEN} bytes");
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the plan {name} is not UTF-8 text"))
}

/// A SHA-256 digest as typed: 64 hex digits, optionally `sha256:`-prefixed, any case.
fn parse_digest(text: &str) -> anyhow::Result<String> {
    let hex = text.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("--digest must be the plan's SHA-256: 64 hex digits");
    }
    Ok(hex.to_ascii_lowercase())
}

fn approvers(grant: &pb::Grant) -> String {
    let names: Vec<String> = grant.approvals.iter().map(|a| escape(&a.by)).collect();
    list_or(&names, "none")
}

fn to_json(grant: &pb::Grant) -> serde_json::Value {
    let approvals: Vec<serde_json::Value> = grant
        .approvals
        .iter()
        .map(|a| serde_json::json!({ "by": a.by, "at": a.at, "plan_digest": a.plan_digest }))
        .collect();
    serde_json::json!({
        "id": grant.id,
        "incident": grant.incident,
        "agent": grant.agent,
        "state": grant.state,
        "action": grant.action,
        "targets": grant.targets,
        "evidence": grant.evidence,
        "plan": grant.plan,
        "plan_digest": grant.plan_digest,
        "scopes": grant.scopes,
        "window_seconds": grant.window_seconds,
        "requested_by": grant.requested_by,
        "requested_at": grant.requested_at,
        "approvals": approvals,
        "quorum": grant.quorum,
        "activated_at": grant.activated_at,
        "expires_at": grant.expires_at,
        "ended_at": grant.ended_at,
        "ended_by": grant.ended_by,
        "end_reason": grant.end_reason,
        "spiffe_id": grant.spiffe_id,
        "playbook": grant.playbook,
    })
}

/// Every field, the evidence and the plan in full: what an approver signs. Each value
/// is escaped onto its own line, so no field can print a line that looks like another.
fn print_grant(grant: &pb::Grant) {
    println!("id:          {}", escape(&grant.id));
    println!(
        "state:       {} ({} of {} approvals)",
        escape(&grant.state),
        grant.approvals.len(),
        grant.quorum
    );
    println!("incident:    {}", escape(&grant.incident));
    println!("agent:       {}", escape(&grant.agent));
    println!("action:      {}", escape(&grant.action));
    println!("targets:     {}", escaped_list(&grant.targets));
    println!("scopes:      {}", escaped_list(&grant.scopes));
    println!(
        "window:      {}",
        humantime::format_duration(Duration::from_secs(grant.window_seconds))
    );
    println!(
        "requested:   {} by {}",
        format_unix(grant.requested_at),
        escape(&grant.requested_by)
    );
    println!("quorum:      {}", grant.quorum);
    if grant.approvals.is_empty() {
        println!("approvals:   none");
    }
    for (i, a) in grant.approvals.iter().enumerate() {
        let label = if i == 0 { "approvals:" } else { "" };
        println!("{label:<12} {} at {}", escape(&a.by), format_unix(a.at));
    }
    println!(
        "activated:   {}",
        grant.activated_at.map_or_else(|| "-".into(), format_unix)
    );
    println!(
        "expires:     {}",
        grant.expires_at.map_or_else(|| "-".into(), format_unix)
    );
    match grant.ended_at {
        Some(at) => println!(
            "ended:       {} by {}: {}",
            format_unix(at),
            escape(&grant.ended_by),
            escape(&grant.end_reason)
        ),
        None => println!("ended:       -"),
    }
    println!("identity:    {}", escape(&grant.spiffe_id));
    if !grant.playbook.is_empty() {
        println!("playbook:    {}", escape(&grant.playbook));
    }
    println!("evidence ({}):", grant.evidence.len());
    for reference in &grant.evidence {
        println!("  - {}", escape(reference));
    }
    for line in plan_block(&grant.plan, &grant.plan_digest) {
        println!("{line}");
    }
}

/// A list of caller-supplied strings on one line: each escaped, comma-separated.
fn escaped_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| escape(i)).collect();
    list_or(&items, "(none)")
}

/// What was approved, on stderr: action, targets, evidence, digest and the plan's start.
fn print_approved(grant: &pb::Grant) {
    eprintln!(
        "approved the plan of grant {} for agent {} on incident {}:",
        escape(&grant.id),
        escape(&grant.agent),
        escape(&grant.incident)
    );
    eprintln!("  action:    {}", escape(&grant.action));
    eprintln!("  targets:   {}", escaped_list(&grant.targets));
    eprintln!("  evidence:  {}", escaped_list(&grant.evidence));
    let rest = format!("writ grant show {}", escape(&grant.id));
    for line in plan_preview(&grant.plan, &grant.plan_digest, PREVIEW_LINES, &rest) {
        eprintln!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digests_are_64_hex_digits_in_lowercase() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_digest(&upper).unwrap(), "ab".repeat(32));
        assert_eq!(
            parse_digest(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            "0".repeat(64)
        );
        for bad in ["", "abc", &"g".repeat(64), &"0".repeat(65)] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_must_exist_be_text_and_fit() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let err = read_plan(&missing).unwrap_err();
        assert!(format!("{err:#}").contains("reading the plan"), "{err:#}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        assert!(read_plan(&empty).unwrap_err().to_string().contains("empty"));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(
            read_plan(&binary)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        let big = dir.path().join("big.txt");
        std::fs::write(&big, "x".repeat(MAX_PLAN_LEN + 1)).unwrap();
        assert!(read_plan(&big).unwrap_err().to_string().contains("larger"));
        let fits = dir.path().join("fits.txt");
        std::fs::write(&fits, "x".repeat(MAX_PLAN_LEN)).unwrap();
        assert_eq!(read_plan(&fits).unwrap().len(), MAX_PLAN_LEN);
    }
}
