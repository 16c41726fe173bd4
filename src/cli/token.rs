//! `writ token create`.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::format_unix;
use crate::proto::admin as pb;
use crate::ttl::Ttl;
use clap::Args;

/// Flags of `writ token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How long the token may be used [default: 10m].
    #[arg(long)]
    ttl: Option<Ttl>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let created = client
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: args.ttl.map(|t| t.secs()),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.admin.json {
        println!(
            "{}",
            serde_json::json!({ "token": created.token, "expires_at": created.expires_at })
        );
    } else {
        println!("{}", created.token);
        eprintln!("single use; expires {}", format_unix(created.expires_at));
    }
    Ok(())
}
