//! `writ authority show | prepare | activate`: CA rotation by hand.

use super::AdminArgs;
use super::client::{connect, rpc_error};
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
    };
    let response = match action {
        Action::Show => client.show_authorities(request).await,
        Action::Prepare => client.prepare_authority(request).await,
        Action::Activate => client.activate_authority(request).await,
    }
    .map_err(rpc_error)?
    .into_inner();
    for a in &response.authorities {
        if args.admin.json {
            println!(
                "{}",
                serde_json::json!({
                    "band": a.band, "trust_domain": a.trust_domain, "id": a.id, "state": a.state,
                    "not_before": a.not_before, "not_after": a.not_after, "jwt_kid": a.jwt_kid,
                })
            );
        } else {
            println!(
                "{:<14} {:<24} {}  {:<8}  until {}",
                a.band,
                a.trust_domain,
                a.id,
                a.state,
                format_unix(a.not_after)
            );
        }
    }
    Ok(())
}
