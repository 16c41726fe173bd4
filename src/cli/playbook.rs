//! `writ playbook create | approve | list | show | activate | retire`
//! (docs/architecture.md, "Policy objects").
//!
//! What approvers sign is the playbook's digest: the SHA-256 of its canonical bounds
//! (action, allowed targets, scopes, maximum window). `playbook show` prints them, and
//! `playbook approve` without `--digest` sends the digest of the playbook it fetched and
//! echoes what was approved. The server is the only judge; this file decides nothing.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix, list_or, print_table};
use crate::proto::admin as pb;
use crate::ttl::Ttl;
use clap::{Args, Subcommand};
use std::time::Duration;

/// `writ playbook …`.
#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Create a playbook: a containment action with a target allow-list, pending the
    /// approval of two approvers (not its creator).
    Create(CreateArgs),
    /// Approve a playbook's digest. Without --digest, the playbook is fetched and what you
    /// approved is echoed to stderr.
    Approve(ApproveArgs),
    /// List every playbook.
    List(AdminArgs),
    /// Show one playbook with its canonical bounds and digest: what approvers sign.
    Show(NameArgs),
    /// Activate an approved playbook for an open incident: the agent holds a remediation
    /// identity for the chosen targets for the window (at most 10 minutes).
    Activate(ActivateArgs),
    /// Retire a playbook for good; its active activations are revoked.
    Retire(RetireArgs),
}

/// Flags of `writ playbook create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The playbook name, e.g. isolate-host (never reused).
    name: String,
    /// What it does, in a line, e.g. "isolate host from the network".
    #[arg(long)]
    action: String,
    /// A target an activation may name, matched exactly (repeatable; at least one).
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// A scope the remediation identity carries (repeatable). Deployment, IAM and secrets
    /// scopes must also be named by the incident it is activated for.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// The longest an activation may last (at most 10m).
    #[arg(long, default_value = "10m")]
    max_window: Ttl,
    /// When to use it and how to undo it, in one line (not part of the approved digest).
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ playbook approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The playbook name.
    name: String,
    /// The playbook's digest (SHA-256 hex) as you read it. Without it, the playbook is
    /// fetched, echoed to stderr, and the fetched digest is approved.
    #[arg(long, value_name = "SHA256")]
    digest: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ playbook show`.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The playbook name.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ playbook activate`.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The playbook name.
    name: String,
    /// The open incident to act on.
    #[arg(long)]
    incident: String,
    /// The agent (profile name) that will hold the remediation identity.
    #[arg(long)]
    agent: String,
    /// A target from the playbook's allow-list (repeatable) [default: its only target].
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// How long the activation lasts [default: the playbook's maximum].
    #[arg(long)]
    window: Option<Ttl>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ playbook retire`.
#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The playbook name.
    name: String,
    /// Why (recorded with the playbook).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Runs a playbook command.
pub async fn run(command: PlaybookCommand) -> anyhow::Result<()> {
    match command {
        PlaybookCommand::Create(args) => create(args).await,
        PlaybookCommand::Approve(args) => approve(args).await,
        PlaybookCommand::List(args) => list(args).await,
        PlaybookCommand::Show(args) => show(args).await,
        PlaybookCommand::Activate(args) => activate(args).await,
        PlaybookCommand::Retire(args) => retire(args).await,
    }
}

fn returned(playbook: Option<pb::Playbook>) -> anyhow::Result<pb::Playbook> {
    playbook.ok_or_else(|| anyhow::anyhow!("the server returned no playbook"))
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let playbook = client
        .create_playbook(pb::CreatePlaybookRequest {
            name: args.name,
            action: args.action,
            description: args.description,
            allowed_targets: args.targets,
            scopes: args.scopes,
            max_window_seconds: Some(args.max_window.secs()),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .playbook;
    let playbook = returned(playbook)?;
    if args.admin.json {
        println!("{}", to_json(&playbook));
    } else {
        println!("created playbook {} (pending)", escape(&playbook.name));
        print_playbook(&playbook);
        eprintln!(
            "hint: it needs {} approvals, not by its creator: `writ playbook approve {} --digest {}`",
            playbook.quorum,
            escape(&playbook.name),
            escape(&playbook.digest)
        );
    }
    Ok(())
}

async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let given = args.digest.as_deref().map(parse_digest).transpose()?;
    let mut client = connect(&args.admin).await?;
    let (digest, fetched) = match given {
        Some(digest) => (digest, false),
        None => {
            let playbook = client
                .get_playbook(pb::GetPlaybookRequest {
                    name: args.name.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .playbook;
            (returned(playbook)?.digest, true)
        }
    };
    let playbook = client
        .approve_playbook(pb::ApprovePlaybookRequest {
            name: args.name,
            digest,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .playbook;
    let playbook = returned(playbook)?;
    // Echoed after the server accepted, so a refusal stays one error line.
    if fetched {
        eprintln!(
            "approved this playbook (sha256 {}):",
            escape(&playbook.digest)
        );
        eprintln!("  {}", escape(&playbook.canonical));
    }
    if args.admin.json {
        println!("{}", to_json(&playbook));
    } else {
        println!(
            "approved playbook {}: {} of {} approvals ({}); {}",
            escape(&playbook.name),
            playbook.approvals.len(),
            playbook.quorum,
            approvers(&playbook),
            escape(&playbook.state)
        );
    }
    Ok(())
}

async fn list(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let playbooks = client
        .list_playbooks(pb::ListPlaybooksRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .playbooks;
    if args.json {
        for playbook in &playbooks {
            println!("{}", to_json(playbook));
        }
        return Ok(());
    }
    if playbooks.is_empty() {
        println!("no playbooks");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = playbooks
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.state.clone(),
                format!("{}/{}", p.approvals.len(), p.quorum),
                humantime::format_duration(Duration::from_secs(p.max_window_seconds)).to_string(),
                p.allowed_targets.join(","),
                p.action.clone(),
            ]
        })
        .collect();
    print_table(
        [
            "NAME",
            "STATE",
            "APPROVALS",
            "MAX WINDOW",
            "TARGETS",
            "ACTION",
        ],
        &rows,
    );
    Ok(())
}

async fn show(args: NameArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let playbook = client
        .get_playbook(pb::GetPlaybookRequest { name: args.name })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .playbook;
    let playbook = returned(playbook)?;
    if args.admin.json {
        println!("{}", to_json(&playbook));
    } else {
        print_playbook(&playbook);
    }
    Ok(())
}

async fn activate(args: ActivateArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let grant = client
        .activate_playbook(pb::ActivatePlaybookRequest {
            name: args.name,
            incident: args.incident,
            agent: args.agent,
            targets: args.targets,
            window_seconds: args.window.map(Ttl::secs),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .grant
        .ok_or_else(|| anyhow::anyhow!("the server returned no grant"))?;
    if args.admin.json {
        println!("{}", grant_json(&grant));
    } else {
        println!(
            "activated playbook {} as grant {}: agent {} may hold {} for {} until {}",
            escape(&grant.playbook),
            escape(&grant.id),
            escape(&grant.agent),
            escape(&grant.spiffe_id),
            escaped_list(&grant.targets, "(no targets)"),
            grant.expires_at.map_or_else(|| "-".into(), format_unix),
        );
        eprintln!(
            "hint: `writ grant revoke {}` ends it now; closing incident {} ends it too",
            escape(&grant.id),
            escape(&grant.incident)
        );
    }
    Ok(())
}

async fn retire(args: RetireArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let response = client
        .retire_playbook(pb::RetirePlaybookRequest {
            name: args.name,
            reason: args.reason.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let playbook = returned(response.playbook)?;
    if args.admin.json {
        let mut json = to_json(&playbook);
        json["revoked_grants"] = response.revoked_grants.into();
        println!("{json}");
    } else {
        println!(
            "retired playbook {}; revoked activations: {}",
            escape(&playbook.name),
            escaped_list(&response.revoked_grants, "none")
        );
    }
    Ok(())
}

/// A SHA-256 digest as typed: 64 hex digits, optionally `sha256:`-prefixed, any case.
fn parse_digest(text: &str) -> anyhow::Result<String> {
    let hex = text.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("--digest must be the playbook's SHA-256: 64 hex digits");
    }
    Ok(hex.to_ascii_lowercase())
}

fn approvers(playbook: &pb::Playbook) -> String {
    let names: Vec<String> = playbook.approvals.iter().map(|a| a.by.clone()).collect();
    escaped_list(&names, "none")
}

/// Caller-supplied strings on one line: each escaped, comma-separated, or `empty`.
fn escaped_list(items: &[String], empty: &str) -> String {
    let items: Vec<String> = items.iter().map(|i| escape(i)).collect();
    list_or(&items, empty)
}

fn to_json(playbook: &pb::Playbook) -> serde_json::Value {
    let approvals: Vec<serde_json::Value> = playbook
        .approvals
        .iter()
        .map(|a| serde_json::json!({ "by": a.by, "at": a.at, "digest": a.plan_digest }))
        .collect();
    serde_json::json!({
        "name": playbook.name,
        "state": playbook.state,
        "action": playbook.action,
        "description": playbook.description,
        "allowed_targets": playbook.allowed_targets,
        "scopes": playbook.scopes,
        "max_window_seconds": playbook.max_window_seconds,
        "digest": playbook.digest,
        "canonical": playbook.canonical,
        "quorum": playbook.quorum,
        "approvals": approvals,
        "created_by": playbook.created_by,
        "created_at": playbook.created_at,
        "retired_at": playbook.retired_at,
        "retired_by": playbook.retired_by,
        "retire_reason": playbook.retire_reason,
    })
}

/// The grant an activation made, as `writ grant show --json` prints grants, with the
/// playbook it came from.
fn grant_json(grant: &pb::Grant) -> serde_json::Value {
    let approvals: Vec<serde_json::Value> = grant
        .approvals
        .iter()
        .map(|a| serde_json::json!({ "by": a.by, "at": a.at, "plan_digest": a.plan_digest }))
        .collect();
    serde_json::json!({
        "id": grant.id,
        "playbook": grant.playbook,
        "incident": grant.incident,
        "agent": grant.agent,
        "state": grant.state,
        "action": grant.action,
        "targets": grant.targets,
        "plan": grant.plan,
        "plan_digest": grant.plan_digest,
        "scopes": grant.scopes,
        "window_seconds": grant.window_seconds,
        "requested_by": grant.requested_by,
        "requested_at": grant.requested_at,
        "approvals": approvals,
        "activated_at": grant.activated_at,
        "expires_at": grant.expires_at,
        "spiffe_id": grant.spiffe_id,
    })
}

/// Every field on its own line, each value escaped: no field can print a line of its own.
fn print_playbook(playbook: &pb::Playbook) {
    println!("name:        {}", escape(&playbook.name));
    println!(
        "state:       {} ({} of {} approvals)",
        escape(&playbook.state),
        playbook.approvals.len(),
        playbook.quorum
    );
    println!("action:      {}", escape(&playbook.action));
    println!(
        "targets:     {}",
        escaped_list(&playbook.allowed_targets, "(none)")
    );
    println!("scopes:      {}", escaped_list(&playbook.scopes, "(none)"));
    println!(
        "max window:  {}",
        humantime::format_duration(Duration::from_secs(playbook.max_window_seconds))
    );
    println!(
        "created:     {} by {}",
        format_unix(playbook.created_at),
        escape(&playbook.created_by)
    );
    for a in &playbook.approvals {
        println!("approved:    {} by {}", format_unix(a.at), escape(&a.by));
    }
    if let Some(at) = playbook.retired_at {
        println!(
            "retired:     {} by {}: {}",
            format_unix(at),
            escape(&playbook.retired_by),
            escape(&playbook.retire_reason)
        );
    }
    println!("digest:      sha256 {}", escape(&playbook.digest));
    println!("approves:    {}", escape(&playbook.canonical));
    if !playbook.description.is_empty() {
        println!("description: {}", escape(&playbook.description));
    }
}
