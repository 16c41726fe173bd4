//! `writ bundle show` and `writ healthcheck`.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use crate::ca::bundle::pem_certificate;
use crate::proto::admin as pb;
use clap::{Args, ValueEnum};
use writ_verifier::Band;

/// Bundle formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Concatenated PEM certificates (for openssl, curl, most TLS stacks).
    Pem,
    /// The SPIFFE bundle as JWKS (X.509 and JWT authorities).
    Jwks,
}

/// Flags of `writ bundle show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Only this band's bundle [default: every band].
    #[arg(long, value_parser = super::parse_band)]
    band: Option<Band>,
    /// Output format.
    #[arg(long, value_enum, default_value = "pem")]
    format: Format,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let bundles = client
        .get_bundles(pb::GetBundlesRequest {
            band: args.band.map(|b| b.to_string()).unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .bundles;
    match (args.format, args.admin.json) {
        (Format::Jwks, _) if bundles.len() == 1 => {
            println!("{}", bundles[0].jwks);
        }
        (Format::Jwks, _) => {
            // One JWKS per trust domain, keyed by trust domain ID; never merged.
            let mut all = serde_json::Map::new();
            for bundle in &bundles {
                let jwks: serde_json::Value = serde_json::from_str(&bundle.jwks)?;
                all.insert(format!("spiffe://{}", bundle.trust_domain), jwks);
            }
            println!("{}", serde_json::Value::Object(all));
        }
        (Format::Pem, true) => {
            for bundle in &bundles {
                let pem: String = bundle
                    .x509_authorities
                    .iter()
                    .map(|c| pem_certificate(c))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "band": bundle.band,
                        "trust_domain": bundle.trust_domain,
                        "sequence": bundle.sequence,
                        "pem": pem,
                    })
                );
            }
        }
        (Format::Pem, false) => {
            for bundle in &bundles {
                for cert in &bundle.x509_authorities {
                    print!("{}", pem_certificate(cert));
                }
            }
        }
    }
    Ok(())
}

pub async fn healthcheck(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let health = client
        .health(pb::HealthRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
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
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "status": if health.signing { "ok" } else { "not_signing" },
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
            })
        );
    } else {
        if health.signing {
            println!(
                "ok: writ {} serving {}",
                health.version,
                health.trust_domains.join(", ")
            );
        } else {
            println!(
                "not signing: writ {}: {}",
                health.version,
                super::output::escape(&health.not_signing)
            );
        }
        if let Some(r) = &health.replication {
            println!(
                "replica {} has applied policy version {} of {}",
                super::output::escape(&r.this_replica),
                r.applied_version,
                r.policy_version
            );
            if !r.store_error.is_empty() {
                println!("store: {}", super::output::escape(&r.store_error));
            }
            for s in &r.replicas {
                println!(
                    "  {:<32} {:<8} applied {:>6}  heartbeat {} ms ago",
                    super::output::escape(&s.name),
                    super::output::escape(&s.state),
                    s.applied_version,
                    s.heartbeat_age_ms
                );
            }
        }
    }
    if !health.signing {
        // Not serving: a probe (systemd, Kubernetes) must see the failure.
        std::process::exit(1);
    }
    Ok(())
}
