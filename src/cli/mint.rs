//! `writ x509 mint` and `writ jwt mint`.

use super::client::{connect, rpc_error};
use super::output::format_unix;
use super::{AdminArgs, IdentityArgs};
use crate::ca::bundle::{pem, pem_certificate};
use crate::proto::admin as pb;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Flags of `writ x509 mint`.
#[derive(Debug, Args)]
pub struct X509MintArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// DNS SAN to add (repeatable).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// Write svid.pem, key.pem (0600) and bundle.pem into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ jwt mint`.
#[derive(Debug, Args)]
pub struct JwtMintArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// Audience (repeatable; at least one).
    #[arg(long = "audience", required = true)]
    audience: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn x509(args: X509MintArgs) -> anyhow::Result<()> {
    // The key is made here and stays here: the server only ever sees a CSR.
    let key = rcgen::KeyPair::generate().context("generating a P-256 key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).context("building the CSR")?;
    let key_der = Zeroizing::new(key.serialize_der());

    let mut client = connect(&args.admin).await?;
    let minted = client
        .mint_x509_svid(pb::MintX509SvidRequest {
            identity: Some(args.identity.to_proto()),
            csr: csr.der().to_vec(),
            ttl_seconds: args.identity.ttl.map(|t| t.secs()),
            dns_names: args.dns_names,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();

    // The leaf, then its intermediates: what a TLS stack presents as the chain.
    let svid_pem: String = std::iter::once(&minted.certificate)
        .chain(&minted.intermediates)
        .map(|c| pem_certificate(c))
        .collect();
    let key_pem = Zeroizing::new(pem("PRIVATE KEY", &key_der));
    let bundle_pem: String = minted.bundle.iter().map(|c| pem_certificate(c)).collect();
    if let Some(dir) = &args.out {
        write_outputs(dir, &svid_pem, &key_pem, &bundle_pem)?;
    }
    if args.admin.json {
        let mut out = serde_json::json!({
            "spiffe_id": minted.spiffe_id,
            "serial": minted.serial,
            "not_after": minted.not_after,
        });
        if args.out.is_none() {
            out["svid_pem"] = svid_pem.into();
            out["key_pem"] = key_pem.as_str().into();
            out["bundle_pem"] = bundle_pem.into();
        }
        println!("{out}");
    } else if let Some(dir) = &args.out {
        println!("spiffe_id: {}", minted.spiffe_id);
        println!("serial:    {}", minted.serial);
        println!("expires:   {}", format_unix(minted.not_after));
        for file in ["svid.pem", "key.pem", "bundle.pem"] {
            println!("wrote {}", dir.join(file).display());
        }
    } else {
        print!("{svid_pem}{}{bundle_pem}", key_pem.as_str());
    }
    Ok(())
}

fn write_outputs(dir: &Path, svid: &str, key: &str, bundle: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, contents: &str, mode: u32| -> anyhow::Result<()> {
        let path = dir.join(name);
        // Write beside, then rename: a reader never sees half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    };
    write("key.pem", key, 0o600)?;
    write("svid.pem", svid, 0o644)?;
    write("bundle.pem", bundle, 0o644)
}

pub async fn jwt(args: JwtMintArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.admin).await?;
    let minted = client
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            identity: Some(args.identity.to_proto()),
            audience: args.audience,
            ttl_seconds: args.identity.ttl.map(|t| t.secs()),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.admin.json {
        println!(
            "{}",
            serde_json::json!({
                "spiffe_id": minted.spiffe_id,
                "token": minted.token,
                "expires_at": minted.expires_at,
            })
        );
    } else {
        println!("{}", minted.token);
    }
    Ok(())
}
