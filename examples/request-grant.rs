//! Asks for a remediation grant as the agent's own workload: `writ.agent.v1 RequestGrant`
//! on the agent's socket (`SPIFFE_ENDPOINT_SOCKET`), under the caller's attested
//! investigative identity. Prints the grant id on stdout (and what to approve on stderr).
//!
//! The requester never counts as an approver, so a human operator can approve what the
//! agent asked for: `writ grant approve <id>`.
//!
//! ```sh
//! request-grant --incident INC-1 --action "restart checkout" --target deploy/checkout --plan plan.txt
//! ```

use anyhow::{Context, anyhow};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use writ::proto::agent::{RequestGrantRequest, agent_api_client::AgentApiClient};

#[derive(Debug, Parser)]
#[command(about = "Request a remediation grant as this workload, through the agent socket")]
struct Args {
    /// The incident the grant is for.
    #[arg(long)]
    incident: String,
    /// What the plan does, in a few words.
    #[arg(long)]
    action: String,
    /// The plan: a file with the proposed fix. Its SHA-256 is what humans approve.
    #[arg(long)]
    plan: PathBuf,
    /// What the plan acts on.
    #[arg(long)]
    target: Vec<String>,
    /// What the plan rests on (URIs, references).
    #[arg(long)]
    evidence: Vec<String>,
    /// Scopes the remediation identity needs.
    #[arg(long)]
    scope: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint =
        std::env::var("SPIFFE_ENDPOINT_SOCKET").context("SPIFFE_ENDPOINT_SOCKET is not set")?;
    let socket = endpoint
        .strip_prefix("unix://")
        .ok_or_else(|| anyhow!("SPIFFE_ENDPOINT_SOCKET must be unix:///path"))?;
    let plan = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("reading {}", args.plan.display()))?;
    let channel = writ::uds::channel(std::path::Path::new(socket)).await?;
    let mut request = tonic::Request::new(RequestGrantRequest {
        incident: args.incident,
        action: args.action,
        targets: args.target,
        evidence: args.evidence,
        plan,
        scopes: args.scope,
        window_seconds: None,
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse()?);
    let filed = AgentApiClient::new(channel)
        .request_grant(request)
        .await
        .map_err(|status| anyhow!("{}", status.message()))?
        .into_inner();
    eprintln!(
        "grant {} requested by {}: plan sha256 {}, {} approval(s) needed",
        filed.grant_id, filed.requested_by, filed.plan_digest, filed.quorum
    );
    println!("{}", filed.grant_id);
    Ok(())
}
