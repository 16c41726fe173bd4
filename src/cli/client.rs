//! Connecting to the admin API: the local Unix socket, or a remote server over mTLS with
//! an operator certificate.

use super::AdminArgs;
use crate::proto::admin::admin_client::AdminClient;
use anyhow::Context;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the admin API is.
pub enum Target<'a> {
    /// A local socket.
    Socket(&'a Path),
    /// What the command's flags say: the socket, or `--server` with mTLS.
    Args(&'a AdminArgs),
}

impl<'a> From<&'a PathBuf> for Target<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Target::Socket(path)
    }
}

impl<'a> From<&'a AdminArgs> for Target<'a> {
    fn from(args: &'a AdminArgs) -> Self {
        Target::Args(args)
    }
}

/// An admin API client whose every call names the tenant it acts in.
pub type Admin = AdminClient<InterceptedService<Channel, InTenant>>;

/// Adds the `writ-tenant` header (`--tenant`, `WRIT_TENANT`) to every call; none means
/// the default tenant.
#[derive(Clone, Debug)]
pub struct InTenant(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for InTenant {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(tenant) = &self.0 {
            request
                .metadata_mut()
                .insert(crate::server::admin::TENANT_HEADER, tenant.clone());
        }
        Ok(request)
    }
}

/// A channel to the admin API the flags name: the socket, or `--server` over mTLS.
pub async fn channel(args: &AdminArgs) -> anyhow::Result<Channel> {
    match &args.server {
        Some(server) => connect_remote(server, args).await,
        None => connect_socket(&args.admin_socket).await,
    }
}

/// A client for the admin API.
pub async fn connect<'a>(target: impl Into<Target<'a>>) -> anyhow::Result<Admin> {
    let (channel, tenant) = match target.into() {
        Target::Socket(path) => (connect_socket(path).await?, None),
        Target::Args(args) => (channel(args).await?, args.tenant.as_deref()),
    };
    let tenant = match tenant.filter(|t| !t.is_empty()) {
        Some(t) => {
            crate::policy::check_name("tenant", t)?;
            Some(MetadataValue::try_from(t).context("the tenant name is not a header value")?)
        }
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, InTenant(tenant)))
}

/// Over mTLS: our operator certificate, and the server's SVID checked with writ's SPIFFE
/// verifier (`spiffe://<trust domain>/writ/server`, chained to the given bundle).
async fn connect_remote(server: &str, args: &AdminArgs) -> anyhow::Result<Channel> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let address = server
        .strip_prefix("https://")
        .context("--server must be https://HOST:PORT")?
        .trim_end_matches('/')
        .to_owned();
    let need = |v: &Option<PathBuf>, flag: &str| {
        v.clone().with_context(|| format!("--server needs {flag}"))
    };
    let cert_path = need(&args.cert, "--cert")?;
    let key_path = need(&args.key, "--key")?;
    let bundle_path = need(&args.server_bundle, "--server-bundle")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the key {}", key_path.display()))?;
    let base = writ_verifier::parse_trust_domain(&args.trust_domain)?;
    let bundle = crate::agent::remote::read_pem_certs(&bundle_path)?;
    struct Fixed(spiffe::TrustDomain, Vec<CertificateDer<'static>>);
    impl writ_verifier::tls::X509BundleSource for Fixed {
        fn x509_authorities(
            &self,
            td: &spiffe::TrustDomain,
        ) -> Option<Vec<CertificateDer<'static>>> {
            (td == &self.0).then(|| self.1.clone())
        }
    }
    let server_id = crate::node_api::server_id(&base)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(writ_verifier::tls::SpiffeServerVerifier::new(
        Arc::new(Fixed(base, bundle)),
        writ_verifier::tls::exactly(server_id),
    )))
    .with_client_auth_cert(chain, key)
    .context("the operator certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::try_from("http://writ-server")?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let address = address.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                let name = ServerName::try_from("writ-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}",
                crate::errors::with_causes(&format!("connecting to {server}: {e}"), &e)
            )
        })?;
    Ok(channel)
}

/// A client for the admin API at `socket`.
async fn connect_socket(socket: &Path) -> anyhow::Result<Channel> {
    if !socket.exists() {
        anyhow::bail!(
            "no admin socket at {} (is `writ dev` running? set --admin-socket or WRIT_ADMIN_SOCKET)",
            socket.display()
        );
    }
    let channel = crate::uds::channel(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(channel)
}

/// Turns a gRPC status into a one-line error, with the transport's cause when there is
/// one (a refused certificate says so, not just "transport error").
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", crate::errors::with_causes(status.message(), &status))
}
