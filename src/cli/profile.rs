//! `writ profile create | list | show | delete`.
//!
//! Flags are passed through as typed: the server parses selectors, bands and scopes and
//! is the only judge of them.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{escape, format_unix, list_or, print_table};
use crate::proto::admin as pb;
use clap::Args;

/// Flags of `writ profile create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The agent (or service) name.
    name: String,
    /// A workload selector, e.g. unix:uid:1001 or unix:path:/usr/bin/sre-agent
    /// (repeatable; a workload must match all).
    #[arg(long = "selector", value_name = "SELECTOR")]
    selectors: Vec<String>,
    /// Bands the agent may hold, comma-separated [default: investigative].
    #[arg(long = "band", value_name = "BANDS", value_delimiter = ',')]
    bands: Vec<String>,
    /// A scope the agent may hold, e.g. logs:read (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A service: a standing identity spiffe://<base>/service/NAME in the base band.
    #[arg(long)]
    service: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ profile show` and `writ profile delete`.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The profile name.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let profile = client
        .create_profile(pb::CreateProfileRequest {
            name: args.name,
            selectors: args.selectors,
            bands: args.bands,
            scopes: args.scopes,
            service: args.service,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .profile
        .ok_or_else(|| anyhow::anyhow!("the server returned no profile"))?;
    if args.admin.json {
        println!("{}", to_json(&profile));
    } else {
        println!("created profile {}", escape(&profile.name));
        print_profile(&profile);
    }
    Ok(())
}

pub async fn list(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let profiles = client
        .list_profiles(pb::ListProfilesRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .profiles;
    if args.json {
        for profile in &profiles {
            println!("{}", to_json(profile));
        }
        return Ok(());
    }
    if profiles.is_empty() {
        println!("no profiles (create one with: writ profile create NAME --selector unix:uid:UID)");
        return Ok(());
    }
    let rows: Vec<[String; 4]> = profiles
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                kind(p).into(),
                p.bands.join(","),
                p.selectors.join(","),
            ]
        })
        .collect();
    print_table(["NAME", "KIND", "BANDS", "SELECTORS"], &rows);
    Ok(())
}

pub async fn show(args: NameArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let profile = client
        .get_profile(pb::GetProfileRequest { name: args.name })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .profile
        .ok_or_else(|| anyhow::anyhow!("the server returned no profile"))?;
    if args.admin.json {
        println!("{}", to_json(&profile));
    } else {
        print_profile(&profile);
    }
    Ok(())
}

pub async fn delete(args: NameArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let profile = client
        .delete_profile(pb::DeleteProfileRequest { name: args.name })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .profile
        .ok_or_else(|| anyhow::anyhow!("the server returned no profile"))?;
    if args.admin.json {
        println!("{}", to_json(&profile));
    } else {
        println!(
            "deleted profile {}; its workloads hold no writ identity from it any more",
            escape(&profile.name)
        );
    }
    Ok(())
}

fn kind(profile: &pb::Profile) -> &'static str {
    if profile.service { "service" } else { "agent" }
}

fn to_json(profile: &pb::Profile) -> serde_json::Value {
    serde_json::json!({
        "name": profile.name,
        "service": profile.service,
        "selectors": profile.selectors,
        "bands": profile.bands,
        "scopes": profile.scopes,
        "created_at": profile.created_at,
    })
}

/// Caller-supplied strings on one line: each escaped, comma-separated, or `empty`.
fn escaped_list(items: &[String], empty: &str) -> String {
    let items: Vec<String> = items.iter().map(|i| escape(i)).collect();
    list_or(&items, empty)
}

/// Every field on its own line, each value escaped (a path selector may hold any
/// character a file name can).
fn print_profile(profile: &pb::Profile) {
    println!("name:       {}", escape(&profile.name));
    println!("kind:       {}", kind(profile));
    println!("bands:      {}", escaped_list(&profile.bands, ""));
    println!("selectors:  {}", escaped_list(&profile.selectors, ""));
    println!("scopes:     {}", escaped_list(&profile.scopes, "(none)"));
    println!("created:    {}", format_unix(profile.created_at));
}
