//! `writ replica admit|remove|list`: which signing replicas' intermediates the server
//! that holds the roots certifies (docs/ha.md, "Signing replicas").

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::escape;
use crate::proto::admin as pb;

/// Flags of `writ replica admit`.
#[derive(Debug, clap::Args)]
pub struct AdmitArgs {
    /// SHA-256 of a replica's intermediate key, as the replica logs it at start; once per
    /// band's key.
    #[arg(long = "key-sha256", required = true, value_name = "HEX")]
    key_sha256: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn admit(args: AdmitArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let response = client
        .admit_replica(pb::AdmitReplicaRequest {
            key_sha256: args.key_sha256,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.admin.json {
        println!("{}", serde_json::json!({ "admitted": response.admitted }));
    } else if response.admitted.is_empty() {
        println!("already admitted");
    } else {
        for key in &response.admitted {
            println!("admitted {key}");
        }
    }
    Ok(())
}

/// Flags of `writ replica remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// SHA-256 of an admitted key (as `writ replica list` shows it); repeatable.
    #[arg(long = "key-sha256", required = true, value_name = "HEX")]
    key_sha256: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let response = client
        .remove_replica(pb::RemoveReplicaRequest {
            key_sha256: args.key_sha256,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.admin.json {
        println!("{}", serde_json::json!({ "removed": response.removed }));
    } else if response.removed.is_empty() {
        println!("none of these keys was admitted");
    } else {
        for key in &response.removed {
            println!(
                "removed {key} (its intermediate is not renewed; it stops signing when it expires)"
            );
        }
    }
    Ok(())
}

pub async fn list(admin: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&admin).await?;
    let keys = client
        .list_replica_keys(pb::ListReplicaKeysRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .keys;
    for key in keys {
        let admitted = key.admission_known.then_some(key.admitted);
        if admin.json {
            println!(
                "{}",
                serde_json::json!({
                    "key_sha256": key.key_sha256,
                    "replica": key.replica,
                    "band": key.band,
                    "trust_domain": key.trust_domain,
                    "state": key.state,
                    "refused": (!key.refused.is_empty()).then_some(&key.refused),
                    "admitted": admitted,
                })
            );
        } else {
            // Names and reasons come from the database: escaped, one line each.
            println!(
                "{}  {:<14} {} {:<10} {}  {}{}",
                key.key_sha256,
                escape(&key.band),
                escape(&key.trust_domain),
                escape(&key.state),
                match admitted {
                    Some(true) => "admitted",
                    Some(false) => "not admitted",
                    None => "admission known on the root holder",
                },
                escape(&key.replica),
                if key.refused.is_empty() {
                    String::new()
                } else {
                    format!("  (refused: {})", escape(&key.refused))
                }
            );
        }
    }
    Ok(())
}
