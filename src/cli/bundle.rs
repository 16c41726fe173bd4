//! `writ bundle show`.

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
