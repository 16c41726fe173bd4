//! `writ authority show | prepare | activate | taint | revoke`: CA rotation by hand, and
//! the answer to a compromised CA key (docs/operations.md, "A compromised CA").

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::escape;
use super::output::format_unix;
use crate::proto::admin as pb;
use writ_verifier::Band;

/// Flags of the authority commands.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this band [default: every band].
    #[arg(long, value_parser = super::parse_band)]
    band: Option<Band>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ authority taint`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The authority, by id (`writ authority show`) [default: the active one of each band].
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    args: Args,
}

/// Flags of `writ authority revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Revoke even though SVIDs it signed have not expired yet: they stop verifying at once.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    change: ChangeArgs,
}

pub async fn taint(args: ChangeArgs) -> anyhow::Result<()> {
    compromise(args, false, true).await
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    compromise(args.change, args.force, false).await
}

async fn compromise(change: ChangeArgs, force: bool, taint: bool) -> anyhow::Result<()> {
    let args = change.args;
    let mut client = connect(&args.admin).await?;
    let request = pb::AuthorityRequest {
        band: args.band.map(|b| b.to_string()).unwrap_or_default(),
        id: change.id.unwrap_or_default(),
        force,
    };
    let response = if taint {
        client.taint_authority(request).await
    } else {
        client.revoke_authority(request).await
    }
    .map_err(rpc_error)?
    .into_inner();
    let verb = if taint { "tainted" } else { "revoked" };
    print(&response.authorities, args.admin.json, Some(verb));
    Ok(())
}

/// Which authority command.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// List.
    Show,
    /// Prepare the next.
    Prepare,
    /// Activate the prepared one.
    Activate,
}

pub async fn run(args: Args, action: Action) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let request = pb::AuthorityRequest {
        band: args.band.map(|b| b.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let response = match action {
        Action::Show => client.show_authorities(request).await,
        Action::Prepare => client.prepare_authority(request).await,
        Action::Activate => client.activate_authority(request).await,
    }
    .map_err(rpc_error)?
    .into_inner();
    print(&response.authorities, args.admin.json, None);
    Ok(())
}

/// Lists `authorities`, one per line; with `verb`, each line says what was done to it.
fn print(authorities: &[pb::Authority], json: bool, verb: Option<&str>) {
    for a in authorities {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "band": a.band, "trust_domain": a.trust_domain, "id": a.id, "state": a.state,
                    "not_before": a.not_before, "not_after": a.not_after, "jwt_kid": a.jwt_kid,
                    "tainted_at": (a.tainted_at != 0).then_some(a.tainted_at),
                    "key_id": a.key_id,
                })
            );
        } else {
            let tainted = if a.tainted_at != 0 { " tainted" } else { "" };
            println!(
                "{}{:<14} {:<24} {}  {:<8}{tainted}  until {}",
                verb.map(|v| format!("{v} ")).unwrap_or_default(),
                escape(&a.band),
                escape(&a.trust_domain),
                escape(&a.id),
                escape(&a.state),
                format_unix(a.not_after)
            );
        }
    }
}
