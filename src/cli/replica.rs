//! `writ replica admit`: lets the server that holds the roots certify a signing
//! replica's intermediates (docs/ha.md, "Signing replicas").

use super::AdminArgs;
use super::client::{connect, rpc_error};
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
