//! `writ healthcheck`: the standard `grpc.health.v1` Check, for probes (systemd,
//! Docker's HEALTHCHECK, Kubernetes exec probes): exit 0 when SERVING, 1 otherwise or
//! when nothing answers (docs/architecture.md, "Health and reflection").
//!
//! On the admin API it also prints the server's own detail (the admin `Health` RPC:
//! version, trust domains, why it does not sign, the replicas), when the caller may read
//! it; on the agent's socket (`--socket`) the status only.

use super::AdminArgs;
use super::client::rpc_error;
use super::output::escape;
use crate::proto::admin as pb;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Flags of `writ healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// An agent's Workload API socket (PATH or unix://PATH) instead of the admin API:
    /// SERVING while the agent holds a node SVID.
    #[arg(long, value_name = "PATH", conflicts_with = "server")]
    socket: Option<String>,
    /// One service's status (e.g. writ.admin.v1.Admin, SpiffeWorkloadAPI) instead of
    /// the whole server's.
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Longest `--service` sent: service names are short; this bounds what a typo sends.
const MAX_SERVICE_LEN: usize = 256;
/// How long a probe waits for an answer before it calls the server unhealthy.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What `writ healthcheck --json` says `status` is: `ok` when SERVING; else why, as far
/// as the server said (`not_signing` with the admin API's reason, `not_serving`
/// without).
fn status_word(serving: bool, not_signing: Option<&str>) -> &'static str {
    match (serving, not_signing.filter(|s| !s.is_empty())) {
        (true, _) => "ok",
        (false, Some(_)) => "not_signing",
        (false, None) => "not_serving",
    }
}

/// The protocol's name of a status on the wire.
fn status_name(status: i32) -> &'static str {
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    match Wire::try_from(status) {
        Ok(Wire::Serving) => "SERVING",
        Ok(Wire::NotServing) => "NOT_SERVING",
        Ok(Wire::ServiceUnknown) => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// Runs `writ healthcheck`.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.service.len() <= MAX_SERVICE_LEN && args.service.chars().all(|c| c.is_ascii_graphic()),
        "--service must be a gRPC service name (at most {MAX_SERVICE_LEN} printable ASCII characters)"
    );
    let channel = match &args.socket {
        Some(socket) => {
            let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
            anyhow::ensure!(
                path.exists(),
                "no Workload API socket at {} (is the agent running?)",
                path.display()
            );
            crate::uds::channel(&path)
                .await
                .with_context(|| format!("connecting to {}", path.display()))?
        }
        None => super::client::channel(&args.admin).await?,
    };
    let mut health = HealthClient::new(channel.clone());
    let answer = tokio::time::timeout(
        TIMEOUT,
        health.check(HealthCheckRequest {
            service: args.service.clone(),
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no health answer within {} s", TIMEOUT.as_secs()))?;
    let status = match answer {
        Ok(answer) => answer.into_inner().status,
        Err(e) if e.code() == tonic::Code::NotFound => {
            anyhow::bail!("the server has no service named {:?}", args.service)
        }
        Err(e) => return Err(rpc_error(e).context("grpc.health.v1 Check failed")),
    };
    let serving = status == ServingStatus::Serving as i32;
    // The server's own detail: the admin API's, for the whole server, when this caller
    // may read it (an operator); a probe without a role still gets the status.
    let detail = match (&args.socket, args.service.is_empty()) {
        (None, true) => {
            let mut admin = crate::proto::admin::admin_client::AdminClient::new(channel);
            tokio::time::timeout(TIMEOUT, admin.health(pb::HealthRequest {}))
                .await
                .ok()
                .and_then(Result::ok)
                .map(tonic::Response::into_inner)
        }
        _ => None,
    };
    print(&args, status, serving, detail.as_ref());
    if !serving {
        // Not serving: a probe (systemd, Docker, Kubernetes) must see the failure.
        std::process::exit(1);
    }
    Ok(())
}

fn print(args: &HealthcheckArgs, status: i32, serving: bool, detail: Option<&pb::HealthResponse>) {
    let not_signing = detail.map(|h| h.not_signing.as_str());
    if args.admin.json {
        let mut out = serde_json::json!({
            "status": status_word(serving, not_signing),
            "serving": status_name(status),
            "service": args.service,
        });
        if let (Some(health), Some(map)) = (detail, out.as_object_mut()) {
            map.extend(detail_json(health));
        }
        println!("{out}");
        return;
    }
    match args.service.as_str() {
        "" => println!("{}", status_name(status)),
        service => println!("{}: {}", escape(service), status_name(status)),
    }
    let Some(health) = detail else { return };
    if health.not_signing.is_empty() {
        println!(
            "writ {} serving {}",
            escape(&health.version),
            escape(&health.trust_domains.join(", "))
        );
    } else {
        println!(
            "not signing: writ {}: {}",
            escape(&health.version),
            escape(&health.not_signing)
        );
    }
    if let Some(r) = &health.replication {
        println!(
            "replica {} has applied policy version {} of {}",
            escape(&r.this_replica),
            r.applied_version,
            r.policy_version
        );
        if !r.store_error.is_empty() {
            println!("store: {}", escape(&r.store_error));
        }
        for s in &r.replicas {
            println!(
                "  {:<32} {:<8} applied {:>6}  heartbeat {} ms ago",
                escape(&s.name),
                escape(&s.state),
                s.applied_version,
                s.heartbeat_age_ms
            );
        }
    }
}

/// The admin API's detail as `--json` fields.
fn detail_json(health: &pb::HealthResponse) -> serde_json::Map<String, serde_json::Value> {
    let replicas: Vec<serde_json::Value> = health
        .replication
        .iter()
        .flat_map(|r| &r.replicas)
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "state": r.state,
                "applied_version": r.applied_version,
                "heartbeat_age_ms": r.heartbeat_age_ms,
                "lease_age_ms": (r.lease_age_ms >= 0).then_some(r.lease_age_ms),
            })
        })
        .collect();
    let value = serde_json::json!({
        "version": health.version,
        "trust_domain": health.trust_domain,
        "trust_domains": health.trust_domains,
        "not_signing": (!health.signing).then_some(&health.not_signing),
        "replication": health.replication.as_ref().map(|r| serde_json::json!({
            "this_replica": r.this_replica,
            "policy_version": r.policy_version,
            "applied_version": r.applied_version,
            "store_error": (!r.store_error.is_empty()).then_some(&r.store_error),
            "replicas": replicas,
        })),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_word_is_ok_only_when_serving() {
        assert_eq!(status_word(true, None), "ok");
        assert_eq!(status_word(true, Some("")), "ok");
        assert_eq!(status_word(false, Some("no lease")), "not_signing");
        assert_eq!(status_word(false, Some("")), "not_serving");
        assert_eq!(status_word(false, None), "not_serving");
    }

    #[test]
    fn status_names_are_the_protocols() {
        assert_eq!(status_name(ServingStatus::Serving as i32), "SERVING");
        assert_eq!(status_name(ServingStatus::NotServing as i32), "NOT_SERVING");
        assert_eq!(status_name(99), "UNKNOWN");
    }
}
