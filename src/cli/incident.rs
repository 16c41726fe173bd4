//! `writ incident open | close | extend | list | show`.
//!
//! Flags are passed through as typed: the server parses severity, names and scopes and
//! is the only judge of them.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix, list_or, print_table};
use crate::proto::admin as pb;
use crate::ttl::Ttl;
use clap::Args;
use std::time::Duration;

/// Flags of `writ incident open`.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The incident id, e.g. INC-1234 (never reused, even after closing).
    id: String,
    /// A short human title.
    #[arg(long)]
    title: String,
    /// sev1, sev2, sev3 or sev4.
    #[arg(long)]
    severity: String,
    /// An agent (profile name) working on it (repeatable; at least one).
    #[arg(long = "assign", value_name = "NAME")]
    assigned: Vec<String>,
    /// A scope for this incident (repeatable) [default: each agent's profile scopes].
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// How long it may stay open before it must be extended.
    #[arg(long, default_value = "4h")]
    max_lifetime: Ttl,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ incident close` and `writ incident show`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The incident id.
    pub(super) id: String,
    #[command(flatten)]
    pub(super) admin: AdminArgs,
}

/// Flags of `writ incident extend`.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The incident id.
    id: String,
    /// How much longer it may stay open, e.g. 2h.
    #[arg(long)]
    by: Ttl,
    #[command(flatten)]
    admin: AdminArgs,
}

fn returned(incident: Option<pb::Incident>) -> anyhow::Result<pb::Incident> {
    incident.ok_or_else(|| anyhow::anyhow!("the server returned no incident"))
}

pub async fn open(args: OpenArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let incident = client
        .open_incident(pb::OpenIncidentRequest {
            id: args.id,
            title: args.title,
            severity: args.severity,
            assigned: args.assigned,
            scopes: args.scopes,
            max_lifetime_seconds: Some(args.max_lifetime.secs()),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .incident;
    let incident = returned(incident)?;
    if args.admin.json {
        println!("{}", to_json(&incident));
    } else {
        let id = escape(&incident.id);
        println!("opened incident {id}");
        print_incident(&incident);
        println!(
            "hint: workloads of {} now receive identities for {id}; `writ incident close {id}` revokes them all",
            escaped_list(&incident.assigned, "(none)"),
        );
    }
    Ok(())
}

pub async fn close(args: IdArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let closed = client
        .close_incident(pb::CloseIncidentRequest { id: args.id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    super::output::warn_unconfirmed(&closed.unconfirmed_replicas);
    let incident = returned(closed.incident)?;
    if args.admin.json {
        println!("{}", to_json(&incident));
    } else {
        println!(
            "closed incident {} at {} by {}; no identity for it is issued any more",
            escape(&incident.id),
            incident.closed_at.map_or_else(|| "-".into(), format_unix),
            escape(incident.closed_by.as_deref().unwrap_or("-")),
        );
    }
    Ok(())
}

pub async fn extend(args: ExtendArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let incident = client
        .extend_incident(pb::ExtendIncidentRequest {
            id: args.id,
            by_seconds: args.by.secs(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .incident;
    let incident = returned(incident)?;
    if args.admin.json {
        println!("{}", to_json(&incident));
    } else {
        println!(
            "extended incident {} by {}; it may stay open until {}",
            escape(&incident.id),
            args.by,
            deadline(&incident)
        );
    }
    Ok(())
}

pub async fn list(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let incidents = client
        .list_incidents(pb::ListIncidentsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .incidents;
    if args.json {
        for incident in &incidents {
            println!("{}", to_json(incident));
        }
        return Ok(());
    }
    if incidents.is_empty() {
        println!("no incidents");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = incidents
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                i.state.clone(),
                i.severity.clone(),
                format_unix(i.opened_at),
                i.assigned.join(","),
                i.title.clone(),
            ]
        })
        .collect();
    print_table(
        ["ID", "STATE", "SEVERITY", "OPENED", "ASSIGNED", "TITLE"],
        &rows,
    );
    Ok(())
}

pub async fn show(args: IdArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let incident = client
        .get_incident(pb::GetIncidentRequest { id: args.id })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .incident;
    let incident = returned(incident)?;
    if args.admin.json {
        println!("{}", to_json(&incident));
    } else {
        print_incident(&incident);
    }
    Ok(())
}

fn to_json(incident: &pb::Incident) -> serde_json::Value {
    serde_json::json!({
        "id": incident.id,
        "title": incident.title,
        "severity": incident.severity,
        "state": incident.state,
        "assigned": incident.assigned,
        "scopes": incident.scopes,
        "opened_by": incident.opened_by,
        "opened_at": incident.opened_at,
        "closed_by": incident.closed_by,
        "closed_at": incident.closed_at,
        "max_lifetime_seconds": incident.max_lifetime_seconds,
        "source": incident.source.as_ref().map(|s| serde_json::json!({
            "name": s.name,
            "kind": s.kind,
            "incident_id": s.incident_id,
            "url": s.url,
        })),
    })
}

/// When the incident closes itself unless extended.
fn deadline(incident: &pb::Incident) -> String {
    incident
        .opened_at
        .checked_add_unsigned(incident.max_lifetime_seconds)
        .map_or_else(|| "-".into(), format_unix)
}

/// Caller-supplied strings on one line: each escaped, comma-separated, or `empty`.
fn escaped_list(items: &[String], empty: &str) -> String {
    let items: Vec<String> = items.iter().map(|i| escape(i)).collect();
    list_or(&items, empty)
}

/// Every field on its own line, each value escaped: a title cannot print a line of its own.
fn print_incident(incident: &pb::Incident) {
    let lifetime = humantime::format_duration(Duration::from_secs(incident.max_lifetime_seconds));
    let deadline = deadline(incident);
    println!("id:            {}", escape(&incident.id));
    println!("title:         {}", escape(&incident.title));
    println!("severity:      {}", escape(&incident.severity));
    println!("state:         {}", escape(&incident.state));
    println!(
        "assigned:      {}",
        escaped_list(&incident.assigned, "(none)")
    );
    println!(
        "scopes:        {}",
        escaped_list(&incident.scopes, "(each agent's profile scopes)")
    );
    println!(
        "opened:        {} by {}",
        format_unix(incident.opened_at),
        escape(&incident.opened_by)
    );
    println!("max lifetime:  {lifetime} (until {deadline})");
    match &incident.source {
        Some(s) => println!(
            "source:        {} ({}) incident {}{}",
            escape(&s.name),
            escape(&s.kind),
            escape(&s.incident_id),
            s.url
                .as_deref()
                .map(|u| format!(" {}", escape(u)))
                .unwrap_or_default()
        ),
        None => println!("source:        - (opened by hand)"),
    }
    match (&incident.closed_at, &incident.closed_by) {
        (Some(at), by) => println!(
            "closed:        {} by {}",
            format_unix(*at),
            escape(by.as_deref().unwrap_or("-"))
        ),
        (None, _) => println!("closed:        -"),
    }
}
