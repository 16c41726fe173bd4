//! Calls the demo ops API (`examples/ops-api.rs`) as a writ agent's workload, over mTLS.
//!
//! The client certificate is this process's SVID of the chosen band from the Workload API
//! (`--band investigative`, the default, or `remediation`), or one saved earlier with
//! `--save DIR` and replayed with `--from DIR`: the way to show that a certificate whose
//! incident has closed is refused although it has not expired. The server must be
//! `spiffe://<base>/service/ops-api`, checked with writ-verifier against the bundles
//! from the Workload API.
//!
//! ```sh
//! ops-call GET /logs
//! ops-call --band remediation POST /restart plan.txt
//! ```
//!
//! Prints the response body; exits 0 on a 2xx answer, 1 on anything else (refused at the
//! handshake or by the route, or no identity).

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use writ_verifier::tls::SpiffeServerVerifier;
use writ_verifier::{Authorizer, Band, WorkloadApiSource};

#[derive(Debug, Parser)]
#[command(about = "Call the demo ops API with this workload's writ identity")]
struct Args {
    /// The ops API's address.
    #[arg(long, env = "OPS_API_ADDR", default_value = "127.0.0.1:8443")]
    server: String,
    /// The base trust domain.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// Which of this workload's identities to present.
    #[arg(long, default_value = "investigative")]
    band: Band,
    /// Also write the SVID used to DIR (svid.der, key.der) for a later --from.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Present the SVID saved in DIR instead of asking the Workload API.
    #[arg(long, value_name = "DIR", conflicts_with = "save")]
    from: Option<PathBuf>,
    /// GET or POST.
    method: String,
    /// The route, e.g. /logs.
    path: String,
    /// A file whose content is the request body (`POST /restart`: the plan).
    body: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let base = writ_verifier::parse_trust_domain(&args.trust_domain)?;
    let (chain, key) = match &args.from {
        Some(dir) => (
            vec![CertificateDer::from(std::fs::read(dir.join("svid.der"))?)],
            std::fs::read(dir.join("key.der"))?,
        ),
        None => own_svid(&args).await?,
    };
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("svid.der"), &chain[0])?;
        write_private(&dir.join("key.der"), &key)?;
    }
    let body = match &args.body {
        Some(file) => std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
        None => Vec::new(),
    };

    let source = Arc::new(
        WorkloadApiSource::from_env()
            .await
            .context("bundles from the Workload API")?,
    );
    let server_id =
        writ_verifier::parse_spiffe_id(&format!("spiffe://{}/service/ops-api", args.trust_domain))?;
    let verifier = SpiffeServerVerifier::with_authorizer(
        Arc::clone(&source) as _,
        Authorizer::service(&base).spiffe_id(&server_id),
        source.revocations(),
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))?;

    let tcp = connect(&args.server).await?;
    // The server name is not checked (the SPIFFE ID is); rustls needs one to send SNI.
    let name = ServerName::try_from("ops-api").map_err(|e| anyhow!("{e}"))?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let request = format!(
        "{} {} HTTP/1.1\r\nhost: ops-api\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        args.method,
        args.path,
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    tls.write_all(&body).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .context("refused by the ops API")?;
    let response = String::from_utf8_lossy(&response);
    let (head, text) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'));
    if ok {
        print!("{text}");
    } else {
        eprint!("{status}: {text}");
    }
    Ok(ok)
}

/// This workload's SVID in the band's trust domain, from the Workload API.
async fn own_svid(args: &Args) -> anyhow::Result<(Vec<CertificateDer<'static>>, Vec<u8>)> {
    let td = args.band.trust_domain_name(&args.trust_domain);
    let client = spiffe::WorkloadApiClient::connect_env()
        .await
        .context("connecting to the Workload API (SPIFFE_ENDPOINT_SOCKET)")?;
    let ctx = client
        .fetch_x509_context()
        .await
        .with_context(|| format!("no {} identity from the Workload API", args.band))?;
    let svid = ctx
        .svids()
        .iter()
        .find(|s| s.spiffe_id().trust_domain().as_str() == td)
        .ok_or_else(|| anyhow!("no {} identity from the Workload API", args.band))?;
    eprintln!("as {}", svid.spiffe_id());
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    Ok((chain, svid.private_key().as_bytes().to_vec()))
}

/// Connects, waiting up to 20 s for a server that is still starting (connection refused).
async fn connect(addr: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("connecting to {addr}")),
        None => bail!("connecting to {addr}"),
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}
