//! `writ svid list [--incident ID] | revoke SERIAL` (docs/architecture.md, "Revocation" and
//! "The CLI").
//!
//! The serial is passed through as typed: the server parses it and is the only judge of
//! whether it names a live certificate writ issued.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::{format_unix, print_table};
use crate::proto::admin as pb;
use clap::Args;

/// Flags of `writ svid list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the SVIDs bound to this incident.
    #[arg(long)]
    incident: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ svid revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The certificate's serial, hex (as `writ svid list` shows it).
    serial: String,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let svids = client
        .list_svids(pb::ListSvidsRequest {
            incident: args.incident.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .svids;
    if args.admin.json {
        for svid in &svids {
            println!("{}", to_json(svid));
        }
        return Ok(());
    }
    if svids.is_empty() {
        println!("no live svids");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = svids
        .iter()
        .map(|s| {
            [
                s.serial.clone(),
                state(s),
                s.band.clone(),
                or_dash(&s.incident),
                format_unix(s.not_after),
                s.spiffe_id.clone(),
            ]
        })
        .collect();
    print_table(
        [
            "SERIAL",
            "STATE",
            "BAND",
            "INCIDENT",
            "NOT AFTER",
            "SPIFFE ID",
        ],
        &rows,
    );
    Ok(())
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let revoked = client
        .revoke_svid(pb::RevokeSvidRequest {
            serial: args.serial,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    super::output::warn_unconfirmed(&revoked.unconfirmed_replicas);
    let svid = revoked
        .svid
        .ok_or_else(|| anyhow::anyhow!("the server returned no svid"))?;
    if args.admin.json {
        println!("{}", to_json(&svid));
    } else {
        println!(
            "revoked svid {} ({}) at {}; verifiers refuse it until it expires at {}",
            super::output::escape(&svid.serial),
            super::output::escape(&svid.spiffe_id),
            svid.revoked_at.map_or_else(|| "-".into(), format_unix),
            format_unix(svid.not_after)
        );
    }
    Ok(())
}

fn state(svid: &pb::Svid) -> String {
    if svid.revoked { "revoked" } else { "valid" }.into()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-" } else { text }.into()
}

fn to_json(svid: &pb::Svid) -> serde_json::Value {
    serde_json::json!({
        "serial": svid.serial,
        "spiffe_id": svid.spiffe_id,
        "band": svid.band,
        "trust_domain": svid.trust_domain,
        "incident": (!svid.incident.is_empty()).then_some(&svid.incident),
        "grant": (!svid.grant.is_empty()).then_some(&svid.grant),
        "not_before": svid.not_before,
        "not_after": svid.not_after,
        "revoked": svid.revoked,
        "revoked_at": svid.revoked_at,
        "revoked_by": (!svid.revoked_by.is_empty()).then_some(&svid.revoked_by),
    })
}
