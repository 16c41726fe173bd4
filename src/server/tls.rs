//! TLS for the node API: the server's own SVID (rotated), SPIFFE client verification of
//! node SVIDs, and a connection type that carries the verified peer ID to handlers.

use super::Issuer;
use crate::backoff::Backoff;
use crate::ca::SvidRequest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use spiffe::{SpiffeId, TrustDomain};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use writ_verifier::Band;
use writ_verifier::tls::{SpiffeClientVerifier, X509BundleSource, peer_spiffe_id};

/// The base trust domain's CAs, live from the issuer (nodes live in the base domain).
#[derive(Debug)]
pub struct IssuerBundles(pub Arc<Issuer>);

impl X509BundleSource for IssuerBundles {
    fn x509_authorities(&self, trust_domain: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        let ca = self.0.cas.ca(Band::Base);
        (ca.trust_domain() == trust_domain).then(|| {
            ca.x509_bundle()
                .into_iter()
                .map(CertificateDer::from)
                .collect()
        })
    }
}

/// Serves the server's current SVID; [`ServerIdentity::run`] swaps in a fresh one at half-life.
#[derive(Debug)]
pub struct ServerIdentity {
    issuer: Arc<Issuer>,
    current: RwLock<(Arc<CertifiedKey>, i64)>,
}

impl ServerIdentity {
    /// Mints the first server SVID.
    pub fn new(issuer: Arc<Issuer>) -> anyhow::Result<Arc<Self>> {
        let first = mint_server_svid(&issuer)?;
        Ok(Arc::new(ServerIdentity {
            issuer,
            current: RwLock::new(first),
        }))
    }

    /// Re-mints at half-life, forever; and at once when an authority of the base trust
    /// domain is tainted (docs/operations.md, "A compromised CA").
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut bundles = self.issuer.bundles.subscribe();
        let mut tainted = base_tainted(&bundles.borrow_and_update());
        loop {
            let not_after = self.current.read().map(|c| c.1).unwrap_or(0);
            let now = self.issuer.cas.now();
            let wait = ((not_after - now) / 2).clamp(1, 3600) as u64;
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now_tainted = base_tainted(&bundles.borrow_and_update());
                    if now_tainted.is_subset(&tainted) {
                        tainted = now_tainted;
                        continue;
                    }
                    tainted = now_tainted;
                    tracing::warn!("a base authority was tainted: re-minting the server SVID");
                }
            }
            match mint_server_svid(&self.issuer) {
                Ok(fresh) => {
                    if let Ok(mut current) = self.current.write() {
                        *current = fresh;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing the server SVID failed; will retry"),
            }
        }
    }
}

/// The jwt kids of the base trust domain's tainted authorities (one per authority).
fn base_tainted(bundles: &crate::ca::BundleSet) -> std::collections::BTreeSet<String> {
    bundles
        .by_band(writ_verifier::Band::Base)
        .map(|b| b.tainted.iter().map(|t| t.jwt_kid.clone()).collect())
        .unwrap_or_default()
}

fn mint_server_svid(issuer: &Issuer) -> anyhow::Result<(Arc<CertifiedKey>, i64)> {
    let key = rcgen::KeyPair::generate()?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let request = SvidRequest {
        spiffe_id: crate::node_api::server_id(issuer.cas.base())?,
        ttl: Some(issuer.config.ca.max_svid_ttl),
        claims: None,
        dns_names: Vec::new(),
    };
    let minted = issuer.mint_server_x509(&spki, &request)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
    let chain = minted
        .full_chain()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let certified = CertifiedKey::new(chain, signing);
    Ok((Arc::new(certified), minted.not_after))
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.0))
    }
}

/// The rustls server configuration of the node API: our SVID, node SVIDs optional at
/// the TLS layer (attestation happens before a node has one) and checked per RPC.
pub fn server_config(
    issuer: &Arc<Issuer>,
    identity: Arc<ServerIdentity>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let base = issuer.cas.base().clone();
    let verifier = SpiffeClientVerifier::new(
        Arc::new(IssuerBundles(Arc::clone(issuer))),
        Arc::new(move |id: &SpiffeId| {
            id.trust_domain() == &base && id.path().starts_with("/node/")
        }),
        false,
    );
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(Arc::new(verifier))
    .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What an admin API handler knows about a caller that came over mTLS.
#[derive(Clone, Debug)]
pub struct AdminPeer {
    /// The operator named by the verified client certificate: the last segment of a
    /// `spiffe://…/operator/<name>` URI SAN, else the subject's common name.
    pub operator: Option<String>,
}

/// The operator a verified client certificate names.
pub fn operator_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    if let Some(id) = peer_spiffe_id(cert) {
        let mut segments = id.path().split('/').skip(1);
        if let (Some("operator"), Some(name), None) =
            (segments.next(), segments.next(), segments.next())
        {
            return Some(name.to_owned());
        }
    }
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    crate::policy::check_name("operator", cn).ok()?;
    Some(cn.to_owned())
}

/// The rustls configuration of the remote admin API: our SVID; a client certificate
/// chained to the operator CA is mandatory.
pub fn admin_server_config(
    identity: Arc<ServerIdentity>,
    operator_cas: &[CertificateDer<'static>],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in operator_cas {
        roots.add(ca.clone())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a node API handler knows about its caller.
#[derive(Clone, Debug)]
pub struct NodePeer {
    /// The verified node SPIFFE ID, if the caller presented a node SVID.
    pub spiffe_id: Option<SpiffeId>,
    /// The serial of that certificate, lowercase hex, so that a revoked node SVID can be
    /// refused (docs/architecture.md, "Revocation").
    pub serial: Option<String>,
}

impl NodePeer {
    /// From the verified client certificate, if any.
    pub fn of(cert: Option<&CertificateDer<'_>>) -> Self {
        NodePeer {
            spiffe_id: cert.and_then(peer_spiffe_id),
            serial: cert.and_then(|der| {
                let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
                Some(crate::hex::lower(parsed.raw_serial()))
            }),
        }
    }
}

impl AdminPeer {
    /// From the verified client certificate, if any.
    pub fn of(cert: Option<&CertificateDer<'_>>) -> Self {
        AdminPeer {
            operator: cert.and_then(operator_name),
        }
    }
}

/// An accepted TLS connection, with what was learnt of its verified peer.
pub struct TlsConn<P> {
    inner: TlsStream<TcpStream>,
    peer: P,
}

/// A node API connection.
pub type NodeConn = TlsConn<NodePeer>;

impl<P: Clone + Send + Sync + 'static> tonic::transport::server::Connected for TlsConn<P> {
    type ConnectInfo = P;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl<P: Unpin> AsyncRead for TlsConn<P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<P: Unpin> AsyncWrite for TlsConn<P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop; a client
/// that stalls or fails its handshake costs only its own task.
pub fn accept_tls<P: Send + 'static>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    peer_of: fn(Option<&CertificateDer<'_>>) -> P,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn<P>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        // Out of descriptors or memory persists until connections close: wait, growing
        // the wait, and say so once per window rather than once per failed accept.
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        let error_log = crate::throttle::Throttle::new(Duration::from_secs(10));
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(pair) => {
                    backoff.reset();
                    pair
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    if let Some(suppressed) = error_log.allow() {
                        tracing::warn!(error = %e, suppressed, ?retry_in, "node API accept failed");
                    }
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let peer = peer_of(
                            tls.get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first()),
                        );
                        let _ = tx.send(Ok(TlsConn { inner: tls, peer })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "node API handshake failed"),
                    Err(_) => tracing::debug!(%addr, "node API handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
