//! A downstream ops API guarded by writ-verifier: HTTPS with mTLS, decisions by band.
//!
//! * `GET /logs`, `GET /metrics`: an investigative identity of an open incident
//!   (`spiffe://investigate.<base>/agent/A/incident/I`).
//! * `POST /restart`: a remediation identity whose grant's approved plan digest is the
//!   SHA-256 of the request body: the humans approved exactly this, nothing else.
//!
//! Its own identity is the service SVID `spiffe://<base>/service/<name>` from the
//! Workload API (`writ profile create NAME --selector … --service`), followed as it
//! rotates. Bundles and revocations come from the same socket through
//! `writ_verifier::WorkloadApiSource`, so a closed incident or ended grant is refused at
//! the next handshake and the next request, however long its certificate has left.
//! Every decision is logged with the caller's SPIFFE ID.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/writ-data/workload.sock cargo run --example ops-api
//! ```
//!
//! One request per connection, HTTP/1.1 with `Connection: close`: a demo, kept small.

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use writ_verifier::tls::{SpiffeClientVerifier, peer_spiffe_id, verified_peer_chain};
use writ_verifier::x509::Usage;
use writ_verifier::{Authorizer, Band, Decision, WorkloadApiSource};

/// The largest request body accepted (a plan).
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(about = "A demo ops API that only writ identities may call, by band")]
struct Args {
    /// Where to listen.
    #[arg(long, env = "OPS_API_ADDR", default_value = "127.0.0.1:8443")]
    listen: String,
    /// The base trust domain.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// The service name: this server is `spiffe://<base>/service/<name>`.
    #[arg(long, default_value = "ops-api")]
    service: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = writ_verifier::parse_trust_domain(&args.trust_domain)?;
    let me = writ_verifier::parse_spiffe_id(&format!(
        "spiffe://{}/service/{}",
        args.trust_domain, args.service
    ))?;
    let source = Arc::new(
        WorkloadApiSource::from_env()
            .await
            .context("bundles and revocations from the Workload API")?,
    );
    let identity = Arc::new(OwnIdentity::default());
    tokio::spawn(follow_own_svid(Arc::clone(&identity), me.to_string()));
    identity.wait().await?;

    // The handshake admits writ agent identities of either band; each route then decides
    // what it needs. Both steps read the live revocation set.
    let admit = Authorizer::new(&base, [Band::Investigative, Band::Remediation]);
    let verifier = LoggingVerifier(SpiffeClientVerifier::with_authorizer(
        Arc::clone(&source) as _,
        admit,
        source.revocations(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_client_cert_verifier(Arc::new(verifier))
    .with_cert_resolver(Arc::clone(&identity) as _);
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, spiffe_id = %me, "ops API ready");
    loop {
        let (tcp, from) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let source = Arc::clone(&source);
        let base = base.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => {
                    if let Err(e) = serve(tls, &source, &base).await {
                        tracing::debug!(%from, error = %e, "connection ended");
                    }
                }
                // The verifier already logged refusals with the caller's SPIFFE ID.
                Err(e) => tracing::debug!(%from, error = %e, "handshake failed"),
            }
        });
    }
}

/// Reads one request, decides, answers, closes.
async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    source: &WorkloadApiSource,
    base: &spiffe::TrustDomain,
) -> anyhow::Result<()> {
    // The chain, verified again against the bundles of now: the peer names the authority
    // it chains to, so one tainted since the handshake is refused too.
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| verified_peer_chain(chain, source, Usage::Client, UnixTime::now()))
        .ok_or_else(|| anyhow!("no verified peer certificate"))?;
    let (method, path, body) = read_request(&mut tls).await?;
    let authorizer = match (method.as_str(), path.as_str()) {
        ("GET", "/logs") => Some(Authorizer::investigative(base).scope("logs:read")),
        ("GET", "/metrics") => Some(Authorizer::investigative(base).scope("metrics:read")),
        // The approved plan must be exactly what is asked.
        ("POST", "/restart") => Some(Authorizer::remediation(base).plan(&body)),
        _ => None,
    };
    let now = UnixTime::now().as_secs();
    let (status, text) = match authorizer {
        None => (404, "not found\n".to_owned()),
        Some(authorizer) => {
            let decision = authorizer.decide(
                &peer,
                &source.revocations().snapshot(),
                i64::try_from(now).unwrap_or(i64::MAX),
            );
            let claims = peer.claims.clone().unwrap_or_default();
            match decision {
                Decision::Allow => {
                    tracing::info!(spiffe_id = %peer.spiffe_id, %method, %path, incident = ?claims.incident, grant = ?claims.grant, "allowed");
                    (200, answer(&path, &claims, &body))
                }
                Decision::Deny(reason) => {
                    tracing::warn!(spiffe_id = %peer.spiffe_id, %method, %path, %reason, "denied");
                    (403, format!("forbidden: {reason}\n"))
                }
            }
        }
    };
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    tls.write_all(response.as_bytes()).await?;
    tls.shutdown().await?;
    Ok(())
}

fn answer(path: &str, claims: &writ_verifier::WritClaims, body: &[u8]) -> String {
    let incident = claims.incident.as_deref().unwrap_or("-");
    match path {
        "/logs" => format!(
            "{incident}: checkout-7d9f 500 Internal Server Error: connection pool exhausted (db-primary)\n"
        ),
        "/metrics" => format!("{incident}: http_errors_total{{service=\"checkout\"}} 1312\n"),
        _ => format!(
            "restarted per approved plan {} (grant {}, approved by {}):\n{}",
            writ_verifier::plan_digest(body),
            claims.grant.as_deref().unwrap_or("-"),
            claims.approvers.join(", "),
            String::from_utf8_lossy(body)
        ),
    }
}

/// The request line, the path without query, and the body (by Content-Length).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<(String, String, Vec<u8>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("malformed request line");
    };
    let (method, path) = (
        method.to_owned(),
        target.split('?').next().unwrap_or("").to_owned(),
    );
    let mut length = 0usize;
    for _ in 0..100 {
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    if length > MAX_BODY {
        bail!("body larger than {MAX_BODY} bytes");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok((method, path, body))
}

/// This server's SVID, replaced as the Workload API rotates it.
#[derive(Debug, Default)]
struct OwnIdentity {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    ready: tokio::sync::Notify,
}

impl OwnIdentity {
    async fn wait(&self) -> anyhow::Result<()> {
        let waiting = self.ready.notified();
        if self
            .current
            .read()
            .map_err(|_| anyhow!("poisoned"))?
            .is_none()
        {
            tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
                .await
                .context("no service SVID from the Workload API after 30 s: is there a --service profile for this process?")?;
        }
        Ok(())
    }
}

impl ResolvesServerCert for OwnIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

/// Follows the Workload API's X.509 context and keeps the SVID named `me`.
async fn follow_own_svid(identity: Arc<OwnIdentity>, me: String) {
    loop {
        let result: anyhow::Result<()> = async {
            let client = spiffe::WorkloadApiClient::connect_env().await?;
            let mut stream = client.stream_x509_contexts().await?;
            while let Some(ctx) = stream.next().await {
                let ctx = ctx?;
                let Some(svid) = ctx.svids().iter().find(|s| s.spiffe_id().to_string() == me)
                else {
                    tracing::warn!(spiffe_id = %me, "the Workload API holds no SVID for this service");
                    continue;
                };
                let chain: Vec<CertificateDer<'static>> = svid
                    .cert_chain()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    svid.private_key().as_bytes().to_vec(),
                ));
                let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
                let certified = Arc::new(CertifiedKey::new(chain, signing));
                *identity.current.write().map_err(|_| anyhow!("poisoned"))? = Some(certified);
                identity.ready.notify_waiters();
                tracing::debug!(spiffe_id = %me, "service SVID updated");
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "Workload API stream failed; reconnecting");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Logs every handshake refusal with the caller's SPIFFE ID, then passes the verdict on.
#[derive(Debug)]
struct LoggingVerifier(SpiffeClientVerifier);

impl ClientCertVerifier for LoggingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self.0.verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verdict {
            let id =
                peer_spiffe_id(end_entity).map_or("(no SPIFFE ID)".into(), |id| id.to_string());
            tracing::warn!(spiffe_id = %id, reason = %e, "denied at handshake");
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
