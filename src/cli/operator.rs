//! `writ operator list | show NAME`.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use crate::proto::admin as pb;

/// Flags of `writ operator show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The operator's name.
    pub name: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn list(args: AdminArgs, only: Option<String>) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let operators = client
        .list_operators(pb::ListOperatorsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .operators;
    let shown: Vec<&pb::Operator> = operators
        .iter()
        .filter(|o| only.as_ref().is_none_or(|name| &o.name == name))
        .collect();
    if let Some(name) = &only
        && shown.is_empty()
    {
        anyhow::bail!("unknown operator {name:?}");
    }
    for o in shown {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "name": o.name, "uid": o.uid, "roles": o.roles, "implicit": o.implicit })
            );
        } else {
            let note = if o.implicit {
                "  (root or the uid running writ)"
            } else {
                ""
            };
            let uid = o.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<16} uid {uid:<6} {}{note}",
                super::output::escape(&o.name),
                super::output::escape(&o.roles.join(","))
            );
        }
    }
    Ok(())
}
